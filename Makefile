# e2em: `make run` starts a local cluster and a client; `make test` runs
# every check CI runs. Both install what they need first (make deps).

GO      ?= go
BIN     := bin
GOBIN   := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

# Unit tests run with the race detector; the end-to-end tests drive real
# processes (built without it) and run on their own.
E2E_PKGS  := ./internal/e2e/...
UNIT_PKGS  = $(shell $(GO) list ./... | grep -v /internal/e2e)
PROTOS    := coord/api/coord.proto coord/store/statepb/state.proto desktop/engine/wire/wire.proto

.PHONY: all deps build run test vet fmt-check unit e2e fuzz bench proto clean package screenshots

all: build

deps:
	@./.ci/deps.sh

build:
	$(GO) build -o $(BIN)/ ./coord ./lb ./bootstrap
	$(GO) build -o $(BIN)/e2em-cli ./desktop/cli
	$(GO) build -o $(BIN)/e2em ./desktop

# run: the cluster in the background (log in data/bootstrap.log), and in
# the foreground the desktop window where there is a display, else the
# headless client; closing it stops the cluster. PROFILE picks the
# profile (data/profiles/$(PROFILE)).
PROFILE ?= me
run: deps build
	@mkdir -p data/profiles
	@bash -c 'if (exec 3<>/dev/tcp/127.0.0.1/7000) 2>/dev/null; then echo "Using the cluster already running on 127.0.0.1:7000."; else \
	  rm -f data/run.json; ./$(BIN)/bootstrap >>data/bootstrap.log 2>&1 & pid=$$!; \
	  trap "kill $$pid 2>/dev/null; wait $$pid" EXIT; \
	  for i in $$(seq 300); do grep -qs "\"ready\": true" data/run.json && break; sleep 0.1; done; fi; \
	  if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
	    echo "e2em cluster running (log: data/bootstrap.log). Another person: make run PROFILE=bob"; \
	    ./$(BIN)/e2em -profile data/profiles/$(PROFILE); \
	  else \
	    echo "No display: the headless client instead of the window. Another person: bin/e2em-cli -profile /tmp/someone"; \
	    ./$(BIN)/e2em-cli -profile data/profiles/$(PROFILE); \
	  fi'

test: deps fmt-check vet unit e2e fuzz

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 10m $(UNIT_PKGS)

e2e:
	$(GO) test -count=1 -timeout 15m $(E2E_PKGS)

fuzz:
	@./.ci/fuzz.sh

bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./internal/bench/...
	$(GO) test -run '^$$' -bench . -benchmem ./desktop/engine/e2e/ ./desktop/engine/store/ ./coord/api/
	$(GO) test -run '^$$' -bench . -benchtime 1x ./desktop/ui/

# package: an installable Linux package of the desktop app (bin/e2em.tar.xz:
# the binary, its icon and .desktop entry, and a Makefile whose "make
# install" puts them in place), by Fyne's packaging tool, with the name, id
# and version of FyneApp.toml.
FYNE_TOOL   := fyne.io/tools/cmd/fyne@v1.7.4
APP_NAME    := $(shell sed -n 's/^Name = "\(.*\)"/\1/p' FyneApp.toml)
APP_ID      := $(shell sed -n 's/^ID = "\(.*\)"/\1/p' FyneApp.toml)
APP_VERSION := $(shell sed -n 's/^Version = "\(.*\)"/\1/p' FyneApp.toml)
package: deps build
	@command -v fyne >/dev/null || $(GO) install $(FYNE_TOOL)
	fyne package --os linux --src desktop --exe $(BIN)/e2em --icon ../assets/icon.png \
		--name $(APP_NAME) --app-id $(APP_ID) --app-version $(APP_VERSION) --release
	mv $(APP_NAME).tar.xz $(BIN)/
	@echo "$(BIN)/$(APP_NAME).tar.xz: unpack it and run make install (as root) to install e2em"

# screenshots: the desktop app's screens under Xvfb, driven as in its
# end-to-end test, into docs/img/.
screenshots: deps
	E2EM_SCREENSHOTS=$(CURDIR)/docs/img $(GO) test -count=1 -run TestDesktopWindow -v ./internal/e2e/

proto:
	protoc -I . --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative $(PROTOS)

clean:
	rm -rf $(BIN)
