"""The command lines' usage errors exit 2 with one line naming the bad value and what is allowed (never a traceback);
every option of every subcommand says in words what it does; one name per concept, the old spellings still read;
`pretrain` refuses a run folder that holds a run unless --resume, ends with a summary, and timestamps its log."""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from helpers import make_cache

from cache_tools.cli import main as cache_main
from cache_tools.cli import make_parser as cache_parser
from pipeline.cli import main as pipeline_main
from pipeline.cli import make_parser as pipeline_parser
from trainer.cli import build_parser as train_parser
from trainer.cli import main as train_main

TINY = ["--backbone", "small", "--epochs", "1", "--batch-size", "2", "--queue-size", "4", "--crop", "24"]
TINY += ["--workers", "0", "--warmup-epochs", "1", "--quiet"]
MAINS = {"fame-pipeline": pipeline_main, "fame-train": train_main, "fame-cache": cache_main}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[str, Path]:
    """A cache and a finished two-step run on it (the cache, the run folder)."""
    root = tmp_path_factory.mktemp("usage")
    cache = make_cache(root, n_videos=4, textured=True)
    out = root / "run"
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY, "--max-steps", "2"]) == 0
    return cache, out


def exit_code(main, argv: list[str]) -> int:
    """A main's exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def one_line(capsys) -> str:
    """stderr, checked to be one line and no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- --help ----------------------------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser):
    """(prog, parser) of every subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield sub.prog, sub
                yield from subcommands(sub)


ALL_PARSERS = [("fame-pipeline", pipeline_parser()), ("fame-train", train_parser()), ("fame-cache", cache_parser())]
ONLY_DEFAULT = re.compile(r"^\W*(default\b[^,;]*)?\W*$", re.IGNORECASE)


def test_every_option_of_every_subcommand_is_described():
    """Each option and argument has a help text in words (not only its default); choices are listed; a required
    option says so; --help of every subcommand formats."""
    walked, bare = [], []
    for _, top in ALL_PARSERS:
        for prog, parser in subcommands(top):
            walked.append(prog)
            assert parser.format_help()  # a bad %-format in a help text raises here
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or (
                    action.help == argparse.SUPPRESS
                ):
                    continue
                name = "/".join(action.option_strings) or action.dest
                words = (action.help or "") % {"default": action.default, "prog": prog}
                if ONLY_DEFAULT.match(words) or len(words.split()) < 2:
                    bare.append(f"{prog} {name}: {action.help!r}")
                if action.choices and action.metavar:
                    shown = str(action.metavar) + words
                    missing = [str(c) for c in action.choices if str(c) not in shown]
                    if missing and not re.search(r"\d+\.\.\d+", str(action.metavar)):
                        bare.append(f"{prog} {name}: choices {missing} not listed")
                if action.required and action.option_strings and "required" not in words:
                    bare.append(f"{prog} {name}: required, and its help does not say so")
    assert not bare, "options without a help text in words (trainer/flags.py HELP for pretrain's):\n" + "\n".join(bare)
    expected = {"build", "synth", "swap-test", "preview", "pretrain", "eval", "export", "plot", "heatmap"}
    expected |= {"info", "verify", "show", "diff", "ls", "gc"}
    assert {prog.split()[-1] for prog in walked} == expected


def test_one_name_per_concept_and_hidden_old_spellings():
    """--videos-root, --workers, --device auto|cpu|gpu, --json [FILE] and --quiet are spelled alike everywhere; the
    old spellings are read but not shown."""
    pretrain = dict(subcommands(train_parser()))["fame-train pretrain"]
    text = pretrain.format_help()
    assert "--videos-root DIR" in text and "--workers N" in text and "--device {auto,cpu,gpu}" in text
    assert "--num-workers" not in text and "--videos " not in text and "decoding processes" in text
    args = pretrain.parse_args(["--num-workers", "3", "--videos", "v", "--device", "cuda"])
    assert (args.loader__num_workers, args.videos, args.device) == (3, "v", "cuda")
    build = dict(subcommands(pipeline_parser()))["fame-pipeline build"]
    assert "Ray tasks" in build.format_help() and "--report" not in build.format_help()
    assert build.parse_args(["src", "--out", "c", "--report", "r.json"]).json == "r.json"
    swap = dict(subcommands(pipeline_parser()))["fame-pipeline swap-test"]
    assert swap.parse_args(["c", "--out", "d", "--videos", "v"]).videos == "v"
    assert "--videos-root DIR" in swap.format_help()
    preview = dict(subcommands(pipeline_parser()))["fame-pipeline preview"]
    assert "--videos-root DIR" in preview.format_help() and "--videos " not in preview.format_help()
    assert preview.parse_args(["c", "--videos", "v"]).videos == "v"
    for _, top in ALL_PARSERS:
        for prog, parser in subcommands(top):
            options = {o for a in parser._actions for o in a.option_strings if a.help != argparse.SUPPRESS}
            assert not options & {"--num-workers", "--report", "--videos"}, prog
            if "--json" in options:
                assert parser.parse_args([*_positionals(parser), "--json"]).json == "-", prog
            if "--device" in options:
                with pytest.raises(SystemExit):
                    parser.parse_args([*_positionals(parser), "--device", "tpu"])


def _makefile_commands() -> list[tuple[str, list[str]]]:
    """(prog and subcommand, its words) of every `$(BIN)/fame-...` command in the Makefile, lines joined where they
    end in a backslash."""
    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text().replace("\\\n", " ")
    out = []
    for match in re.finditer(r"\$\(BIN\)/(fame-\w+) ([\w-]+)([^\n;&|]*)", text):
        out.append((f"{match[1]} {match[2]}", match[3].split()))
    return out


def test_the_makefile_spells_every_option_as_help_shows_it():
    """`make demo` is the README's first example: its commands use the names --help shows, not an older spelling
    still read (`build --report FILE` is `--json FILE`)."""
    shown = {
        prog: {o for a in parser._actions for o in a.option_strings if a.help != argparse.SUPPRESS}
        for _, top in ALL_PARSERS
        for prog, parser in subcommands(top)
    }
    commands = _makefile_commands()
    assert {"fame-pipeline build", "fame-cache show", "fame-train pretrain"} <= {prog for prog, _ in commands}
    hidden = [
        f"{prog} {word}"
        for prog, words in commands
        for word in words
        if word.startswith("--") and word.split("=")[0] not in shown[prog]
    ]
    assert not hidden, hidden


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    """Values for a parser's required arguments and options, so one more option can be parsed alone."""
    words = [f"p{i}" for i, a in enumerate(parser._actions) if not a.option_strings and a.nargs != "?"]
    return words + [w for a in parser._actions if a.required and a.option_strings for w in (a.option_strings[0], "x")]


# --- usage errors -----------------------------------------------------------------------------------------------------


def test_usage_errors_exit_2_with_one_line_everywhere(run, tmp_path, capsys):
    """A table of bad command lines of the three CLIs: each exits 2 with one stderr line naming the bad value and
    what is allowed, never a traceback, before any work."""
    cache, out = run
    ckpt, video = str(out / "checkpoint.pt"), str(Path(cache).parent / "class_0" / "video 0.mp4")
    fresh = str(tmp_path / "fresh")
    cases = [
        ("fame-train pretrain --cache nope.zarr --out F", "--cache nope.zarr: no such file or folder; expected"),
        ("fame-train pretrain --out F", "--cache CACHE is required"),
        ("fame-train pretrain --cache C --out F --init nope.pt", "--init nope.pt: no such file"),
        ("fame-train pretrain --cache C --out F --backbone big", "invalid choice: 'big' (choose from 'r2plus1d18'"),
        ("fame-train pretrain --cache C --out F --device tpu", "invalid choice: 'tpu' (choose from auto, cpu, gpu)"),
        ("fame-train pretrain --cache C --out F --max-steps 0", "--max-steps must be >= 1, got 0"),
        ("fame-train pretrain --cache C --out F --epochs 0", "epochs must be >= 1, got 0"),
        ("fame-train pretrain --cache C --out F --resume", "--resume: F/config.json not found"),
        ("fame-train heatmap K nope.mp4 --out F.png", "VIDEO nope.mp4: no such file or folder"),
        ("fame-train heatmap nope.pt V --out F.png", "CHECKPOINT nope.pt: no such file or folder"),
        ("fame-train heatmap K V --out F.png --block 9", "invalid choice: 9 (choose from 0, 1, 2, 3, 4)"),
        ("fame-train eval K --train nope --test nope", "--train nope: no such file or folder"),
        ("fame-train eval K --train 'nope/*_split1.txt' --test C", "the pattern matches no file"),
        ("fame-train eval K --train C --test C --protocol lin", "--protocol 'lin': choose a comma"),
        ("fame-train eval K --train C --test C --size 12x", "--size: size must be HxW"),
        ("fame-train eval K --train C --test C --json T", "is a folder; give the file to write"),
        ("fame-train eval K --train C", "give --test TEST, or --test-cache CACHE"),
        ("fame-train export nope.pt --out F.pt", "CHECKPOINT nope.pt: no such file or folder"),
        ("fame-train plot nope", "RUN nope: no such file or folder"),
        ("fame-train bogus", "invalid choice: 'bogus'"),
        ("fame-pipeline build nope --out F", "SRC nope: no such file or folder"),
        ("fame-pipeline build 'nope/*.txt' --out F", "SRC nope/*.txt: the pattern matches no file"),
        ("fame-pipeline build V --out F --videos-root nope", "--videos-root nope: no such file or folder"),
        ("fame-pipeline build V", "give --out CACHE.zarr or --cache-root ROOT"),
        ("fame-pipeline build --out F", "SRC is required"),
        ("fame-pipeline build V --out F --size 12x", "size must be HxW"),
        ("fame-pipeline build V --out F --workers 0", "--workers must be >= 1, got 0"),
        ("fame-pipeline build V --out F --method nope", "invalid choice: 'nope'"),
        ("fame-pipeline swap-test nope.zarr --out F", "CACHE nope.zarr: no such file or folder"),
        ("fame-pipeline swap-test C --out F --videos-root nope", "--videos-root nope: no such file or folder"),
        ("fame-pipeline preview nope.zarr --out F.png", "CACHE nope.zarr: no such file or folder; expected a cache"),
        ("fame-pipeline synth F --classes 0", "--classes and --videos-per-class must be >= 1"),
        ("fame-cache ls nope", "ROOT nope: no such file or folder"),
        ("fame-cache info nope.zarr", "CACHE nope.zarr: no such file or folder; expected a cache"),
        ("fame-cache verify nope.zarr", "CACHE nope.zarr: no such file or folder"),
        ("fame-cache verify C --force-unlock", "--force-unlock goes with --fix"),
        ("fame-cache show nope.zarr --out F.png", "CACHE nope.zarr: no such file or folder"),
        ("fame-cache show C --clip 9999 --out F.png", "--clip 9999 is out of range"),
        ("fame-cache show C --out F.png --clip x", "argument --clip: invalid int value: 'x'"),
        ("fame-cache diff C nope.zarr", "B nope.zarr: no such file or folder"),
        ("fame-cache gc nope.zarr", "CACHE nope.zarr: no such file or folder"),
        ("fame-cache gc C --dry-run --force-unlock", "--force-unlock goes with a real run"),
        ("fame-cache info", "the following arguments are required: cache"),
    ]
    (tmp_path / "report.json").mkdir()  # a folder where a --json FILE is asked
    names = {"C": cache, "K": ckpt, "V": video, "F": fresh, "T": str(tmp_path / "report.json")}
    for line, message in cases:
        prog, *words = [names.get(w, w) for w in _split(line)]
        main = MAINS[prog]
        assert exit_code(main, words) == 2, line
        err = one_line(capsys)
        assert message.replace("F/", fresh + "/") in err, (line, err)
    # build's report is named by the option given, --json, not by its older hidden name --report
    for target, why in ((names["T"], "is a folder"), (str(tmp_path / "nope" / "r.json"), "does not exist")):
        assert exit_code(pipeline_main, ["build", video, "--out", fresh, "--json", target]) == 2
        err = one_line(capsys)
        assert f"--json {target}: " in err and why in err and "--report" not in err, err
    # a file that exists but is not a cache is bad input, not bad usage: exit 1 (3 for fame-cache), still one line
    assert train_main(["pretrain", "--cache", video, "--out", fresh, *TINY]) == 1
    assert "no cache here" in one_line(capsys)
    assert cache_main(["info", video]) == 3
    assert "no cache here" in one_line(capsys)


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def test_json_goes_to_a_file_or_to_stdout(run, tmp_path, capsys):
    """`--json FILE` writes the JSON there (the table still prints); a bare `--json` prints the JSON instead."""
    cache, _ = run
    assert cache_main(["info", cache, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert cache_main(["info", "--json", cache]) == 0  # a bare --json before the cache does not take it as FILE
    assert json.loads(capsys.readouterr().out) == printed
    target = tmp_path / "sub" / "info.json"
    assert cache_main(["info", cache, "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert json.loads(target.read_text()) == printed and "videos" in out and not out.lstrip().startswith("{")
    assert cache_main(["ls", str(Path(cache).parent), "--json"]) == 0
    assert [e["url"] for e in json.loads(capsys.readouterr().out)] == [printed["url"]]


# --- run folders ------------------------------------------------------------------------------------------------------


def test_pretrain_refuses_a_run_folder_without_resume(run, capsys):
    cache, out = run
    before = {name: (out / name).read_bytes() for name in ("config.json", "checkpoint.pt", "log.jsonl")}
    capsys.readouterr()
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY]) == 2
    assert f"--out {out} already holds a run" in (err := one_line(capsys)) and "--resume" in err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    (out / "checkpoint.pt").unlink()  # any one of the run's files is enough to refuse
    (out / "config.json").unlink()
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY]) == 2
    assert "(log.jsonl)" in one_line(capsys)
    (out / "checkpoint.pt").write_bytes(before["checkpoint.pt"])
    (out / "config.json").write_bytes(before["config.json"])


def test_pretrain_summary_and_log_timestamps(run, tmp_path, capsys):
    cache, _ = run
    out = tmp_path / "run"
    assert train_main(["pretrain", "--cache", cache, "--out", str(out), *TINY, "--max-steps", "2"]) == 0
    summary = [line for line in capsys.readouterr().err.splitlines() if "final loss" in line]
    assert len(summary) == 1 and summary[0].startswith("pretrain: 2 steps (to step 2 of "), summary
    assert " s, final loss " in summary[0] and summary[0].endswith("clips/s")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all({"step", "loss", "lr", "clips_per_s", "data_wait"} <= set(r) for r in records)
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in records]
    assert all(s.utcoffset() is not None for s in stamps) and stamps[0] <= stamps[1]
