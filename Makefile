# Every command of the README has a target here. `make demo` and `make test` build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := out/demo
REAL_VIDEOS := ../shared/data/real_videos

.PHONY: setup test lint format demo bench bench-preprocess bench-masks bench-loader bench-bias bench-bias-quick bench-bias-long bench-faults bench-wait bench-scale gpu-check clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

# The README's first example: generated + real videos -> cache -> pretrain -> evaluate, on the CPU.
demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/fame-pipeline synth $(DEMO)/videos --classes 3 --videos-per-class 4 --frames 40 --seed 0
	$(BIN)/fame-pipeline synth $(DEMO)/test --classes 3 --videos-per-class 2 --frames 40 --seed 1
	if [ -d $(REAL_VIDEOS) ]; then mkdir -p $(DEMO)/videos/real && cp $(REAL_VIDEOS)/*.mp4 $(DEMO)/videos/real/; fi
	$(BIN)/fame-pipeline build $(DEMO)/videos --out $(DEMO)/cache.zarr --size 64x86 --clip-len 8 --stride 2 \
		--clips-per-video 2 --workers 2 --json $(DEMO)/build.json
	$(BIN)/fame-cache info $(DEMO)/cache.zarr
	$(BIN)/fame-cache show $(DEMO)/cache.zarr --clip 0 --out $(DEMO)/clip.png
	$(BIN)/fame-cache show $(DEMO)/cache.zarr --sheet 24 --out $(DEMO)/sheet.png
	$(BIN)/fame-pipeline preview $(DEMO)/cache.zarr --out $(DEMO)/batch.png
	$(BIN)/fame-train pretrain --cache $(DEMO)/cache.zarr --out $(DEMO)/run --backbone small --epochs 4 \
		--batch-size 4 --crop 56 --queue-size 64 --workers 2 --warmup-epochs 1
	cd $(DEMO) && ls videos/class_*/*.mp4 > train.txt  # the probe's classes: the generated ones, as in the test set
	$(BIN)/fame-pipeline build $(DEMO)/test --out $(DEMO)/test.zarr --size 64x86 --clip-len 8 --stride 2 \
		--clips-per-video 2 --quiet
	$(BIN)/fame-pipeline swap-test $(DEMO)/test.zarr --out $(DEMO)/swapped --preview $(DEMO)/swapped.png
	$(BIN)/fame-train eval $(DEMO)/run/checkpoint.pt --train $(DEMO)/train.txt --test $(DEMO)/test \
		--clip-len 8 --clips-per-video 2 --size 64x86 --protocol linear,knn,retrieval,swapped \
		--test-cache $(DEMO)/test.zarr --json $(DEMO)/metrics.json
	$(BIN)/fame-train heatmap $(DEMO)/run/checkpoint.pt $(DEMO)/test/class_0/video_0.mp4 --clip-len 8 \
		--out $(DEMO)/heatmap.png
	$(BIN)/fame-train export $(DEMO)/run/checkpoint.pt --out $(DEMO)/backbone.pt
	@echo "demo outputs in $(DEMO)/: cache.zarr, build.json, clip.png, batch.png, run/checkpoint.pt," \
		"run/log.jsonl, run/curves.png, test.zarr, swapped/ (labels.csv), swapped.png, metrics.json, heatmap.png," \
		"backbone.pt"

bench: bench-preprocess bench-masks bench-loader bench-wait bench-bias bench-faults bench-scale

bench-preprocess: $(STAMP)
	$(PY) benchmarks/preprocess.py --json benchmarks/results/preprocess.json

bench-masks: $(STAMP)
	$(PY) benchmarks/masks.py --json benchmarks/results/masks.json

bench-scale: $(STAMP)
	$(PY) benchmarks/scale.py --json benchmarks/results/scale.json

bench-loader: $(STAMP)
	$(PY) benchmarks/loader.py --json benchmarks/results/loader.json

# On a machine with an NVIDIA GPU: the GPU tests (they skip elsewhere) and the loader's throughput on the device.
gpu-check: $(STAMP)
	$(PY) -m pytest -q tests/test_loader_gpu.py
	$(PY) benchmarks/loader.py --device gpu --json benchmarks/results/loader_gpu.json

bench-wait: $(STAMP)
	$(PY) benchmarks/train_wait.py --json benchmarks/results/train_wait.json

bench-bias: $(STAMP)
	$(PY) benchmarks/bias.py --json benchmarks/results/bias.json

bench-bias-quick: $(STAMP)
	$(PY) benchmarks/bias.py --quick --json benchmarks/results/bias_quick.json

# The defaults against plain MoCo alone, at 324 steps instead of 270 (about 25 min on 2 cores).
bench-bias-long: $(STAMP)
	$(PY) benchmarks/bias.py --epochs 36 --arms moco fame --json benchmarks/results/bias_long.json

# Every kind of cache damage: detected, never read silently, repaired to a clean build's bytes.
bench-faults: $(STAMP)
	$(PY) benchmarks/faults.py --json benchmarks/results/faults.json

clean:
	rm -rf out runs .pytest_cache
