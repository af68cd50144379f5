"""Read-mostly tools over FAME caches: info, verify, show, diff, ls, gc."""
