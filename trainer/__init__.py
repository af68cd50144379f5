"""MoCo contrastive pretraining on FAME views, the micro-bias module, and evaluation."""
