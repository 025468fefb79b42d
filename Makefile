# Everything runs from a fresh Debian 12 machine as root: the targets install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DIST := dist

# Host packages: the daemon's own dependencies (for the unit and D-Bus tests), QEMU and
# debootstrap (VM tests), the packaging tool chains, makedumpfile (the VM tests read the
# guests' dumps back with it), busybox (its sh checks the capture initramfs's /init) and
# zstd (a unit test compresses an initrd as mkinitramfs does), man-db (a unit test renders
# the man pages with `man --warnings`, as lintian does).
APT_PACKAGES := python3-venv python3-pip python3-gi python3-pydbus python3-systemd \
	python3-yaml python3-dbusmock dbus policykit-1 qemu-system-x86 qemu-utils debootstrap \
	e2fsprogs dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-setuptools \
	python3-all python3-wheel python3-build python3-installer lintian rpm rpmlint python3-rpm \
	devscripts fakeroot git systemd makedumpfile busybox zstd man-db
PIP_PACKAGES := pytest ruff mypy types-PyYAML

.PHONY: all deps venv lint unit dbus vm test demo deb rpm image bench bench-reservation bench-compression bench-big clean

all: test

# apt-get runs only when something is missing, so repeated runs stay fast and offline.
deps:
	@missing=$$(dpkg-query -W -f='$${db:Status-Status} $${Package}\n' $(APT_PACKAGES) 2>&1 \
		| awk '$$1 != "installed" {print $$NF}'); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $(APT_PACKAGES); \
	fi

$(VENV)/.stamp: pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q $(PIP_PACKAGES)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: deps $(VENV)/.stamp

lint: venv
	$(VENV)/bin/ruff check kdumpd tests bench
	$(VENV)/bin/ruff format --check kdumpd tests bench
	$(VENV)/bin/mypy kdumpd tests bench

unit: venv
	$(PY) -m pytest -q tests/unit

dbus: venv
	$(PY) -m pytest -q tests/dbus

deb: deps
	packaging/build-deb.sh $(DIST)

rpm: deps
	packaging/build-rpm.sh $(DIST)

image: venv
	$(PY) -m tests.vm.image

vm: venv deb image
	$(PY) -m pytest -q tests/vm

test: lint deb rpm
	packaging/lint.sh $(DIST)/kdumpd_*_all.deb $(DIST)/kdumpd-*.noarch.rpm
	$(PY) -m pytest -q --durations=12 tests

demo: venv deb image
	$(PY) -m tests.vm.demo

bench: venv deb image
	$(PY) -m bench.run kdumpd kdump-tools kdump-tools kdumpd
	$(PY) -m bench.remote kdumpd kdump-tools
	$(PY) -m bench.idle_rss

bench-reservation: venv deb image
	$(PY) -m bench.min_reservation

bench-compression: venv deb image
	$(PY) -m bench.compression

bench-big: venv deb image
	$(PY) -m bench.big_machine

clean:
	rm -rf $(VENV) $(DIST) build .mypy_cache .ruff_cache .pytest_cache
