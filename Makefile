# QuorumBD build. `make` builds release binaries in build/release/bin; `make test` builds in
# build/debug and runs the unit and integration tests; MODE=asan|fuzz select other build folders.
MODE ?= release
MAKEFLAGS += -j$(shell nproc)
BUILD := build/$(MODE)

CXX ?= g++
ifeq ($(MODE),asan)
  CXX := clang++
endif
ifeq ($(MODE),fuzz)
  CXX := clang++
endif

CPPFLAGS += -Iinclude -Isrc -MMD -MP -DQBD_SOURCE_DIR='"$(CURDIR)"'
CXXFLAGS += -std=c++20 -Wall -Wextra -Wshadow -Wnon-virtual-dtor -Werror -pthread
LDLIBS += -lnfs -lxxhash -lboost_program_options -lfmt -lsystemd $(shell pkg-config --libs prometheus-cpp-core) -pthread
# The REST API (src/service/api.cc): cpp-httplib (Debian's build is a library: its flags must
# match it) and nlohmann-json (headers only).
CPPFLAGS += $(shell pkg-config --cflags cpp-httplib nlohmann_json)
LDLIBS += $(shell pkg-config --libs cpp-httplib)
# Attaching volumes as /dev/nbdX (src/attach/nbd_attach.cc): the kernel's netlink NBD family
# through libnl-genl-3.
CPPFLAGS += $(shell pkg-config --cflags libnl-genl-3.0)
LDLIBS += $(shell pkg-config --libs libnl-genl-3.0)

ifeq ($(MODE),release)
  CXXFLAGS += -O2 -g -DNDEBUG
else ifeq ($(MODE),debug)
  CXXFLAGS += -O1 -g
else ifeq ($(MODE),asan)
  CXXFLAGS += -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=address,undefined
else ifeq ($(MODE),fuzz)
  CXXFLAGS += -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=address,undefined
else
  $(error unknown MODE=$(MODE): release, debug, asan or fuzz)
endif

LIB_SRCS := $(wildcard src/*/*.cc)
BIN_NAMES := $(notdir $(wildcard src/bin/*))
TEST_SRCS := $(wildcard tests/*_test.cc tests/testutil/*.cc tests/regress/*_test.cc)
FUZZ_SRCS := $(wildcard fuzz/*_fuzz.cc)

LIB_OBJS := $(LIB_SRCS:%.cc=$(BUILD)/%.o)
TEST_OBJS := $(TEST_SRCS:%.cc=$(BUILD)/%.o)
LIB := $(BUILD)/libqbd.a
BINS := $(BIN_NAMES:%=$(BUILD)/bin/%)
FUZZERS := $(FUZZ_SRCS:fuzz/%.cc=$(BUILD)/fuzz/%)

.PHONY: install uninstall all deps test test-vm unit integration run bench bench-nfs bench-verify bench-verify-nfs asan fuzz clean format check-format check-headers
.DEFAULT_GOAL := all

all: deps $(BINS)

deps:
	@scripts/install-deps.sh

$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/%: $(BUILD)/src/bin/%/main.o $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/unit_tests: $(TEST_OBJS) $(LIB)
	$(CXX) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz/%: $(BUILD)/fuzz/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

# `make test`: unit tests (doctest) and integration tests (real daemon, real NBD clients), ending
# with one line "N passed, N failed".
test:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory MODE=debug build/debug/unit_tests $(BIN_NAMES:%=build/debug/bin/%)
	@scripts/run-tests.sh build/debug

unit:
	@$(MAKE) --no-print-directory MODE=debug deps build/debug/unit_tests
	build/debug/unit_tests --order-by=rand

integration:
	@$(MAKE) --no-print-directory MODE=debug deps $(BIN_NAMES:%=build/debug/bin/%)
	@QBD_SKIP_UNIT=1 scripts/run-tests.sh build/debug $(T)

# `make test-vm`: every guest script of tests/vm/guest/ in the test VM (Debian 12's kernel in qemu,
# cached in build/vm; tests/vm/build.sh), through tests/integration/test_vm.sh. `make test` runs
# only the essential ones. The old binaries attach_upgrade needs are built first
# (tests/vm/build-old.sh, cached), outside test_vm.sh's time limit; when that fails, test_vm.sh
# reports why.
VM_TESTS = $(basename $(notdir $(wildcard tests/vm/guest/*.sh)))
test-vm:
	@$(MAKE) --no-print-directory MODE=debug deps $(BIN_NAMES:%=build/debug/bin/%)
	@tests/vm/build-old.sh >/dev/null || true
	@QBD_SKIP_UNIT=1 QBD_VM_TESTS="$(VM_TESTS)" scripts/run-tests.sh build/debug test_vm

# `make run`: build, then serve the embedded default (three local parts under ./var, volume
# "demo" of 1 GiB) on 127.0.0.1:10809 with its config in var/qbd.conf. Ctrl-C stops it.
run: all
	$(BUILD)/bin/qbd-master --config var/qbd.conf --create-default

asan:
	@QBD_DEPS_SANITIZERS=1 scripts/install-deps.sh
	@$(MAKE) --no-print-directory MODE=asan build/asan/unit_tests $(BIN_NAMES:%=build/asan/bin/%)
	@scripts/run-tests.sh build/asan

# `make fuzz`: every fuzz/<t>_fuzz.cc for FUZZ_SECONDS each, one after the other, on its seed corpus
# fuzz/corpus/<t>/ (new inputs go to build/fuzz/corpus/<t>/). An allocation beyond the limits
# below is a finding, like a crash.
FUZZ_SECONDS ?= 30
FUZZ_FLAGS ?= -rss_limit_mb=512 -malloc_limit_mb=256
fuzz:
	@QBD_DEPS_SANITIZERS=1 scripts/install-deps.sh
	@$(MAKE) --no-print-directory MODE=fuzz $(FUZZ_SRCS:fuzz/%.cc=build/fuzz/fuzz/%)
	@for f in $(FUZZ_SRCS:fuzz/%.cc=%); do \
	  mkdir -p fuzz/corpus/$$f build/fuzz/corpus/$$f; \
	  build/fuzz/fuzz/$$f -max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS) build/fuzz/corpus/$$f fuzz/corpus/$$f || exit 1; \
	done

# qbd-master against NBD peers on this machine (scripts/bench.py says what each row and column is):
# warm rows, then cold rows on BENCH_COLD_SIZE exports (default 4G, 0 for none) with the page cache
# dropped before each job (root; about 9 x BENCH_COLD_SIZE free in BENCH_DIR). BENCH_SECONDS (30),
# BENCH_SIZE (1G), BENCH_COPY_SIZE (2G), BENCH_ROUNDS (1), BENCH_DIR, BENCH_CACHE, BENCH_BASE.
bench: all
	scripts/bench.py $(BUILD)

# qbd over three nfs-ganesha servers against qemu-nbd on nfs:// (BENCH_SECONDS, BENCH_SIZE as above).
bench-nfs: all
	QBD_BIN=$(BUILD)/bin scripts/bench-nfs.sh

# qbd-verify (quick, 100k chunk files; --deep against cat) and qbd-repair against cp (BENCH_VERIFY_SIZE, default 1G).
bench-verify: all
	scripts/bench-verify.sh $(BUILD)

# The same with parts a, b, c on three nfs-ganesha servers on 127.0.0.1 (BENCH_VERIFY_SIZE, default 512M).
bench-verify-nfs: all
	BENCH_VERIFY_NFS=1 scripts/bench-verify.sh $(BUILD)

# `make install` (as root, after `make`): the four tools in $(SBINDIR) (admin tools and a daemon:
# sbin, as Debian packages them), qbd.conf.example as $(SYSCONFDIR)/qbd/qbd.conf only when that file
# is absent (an admin's file is never overwritten) and under $(DOCDIR), the man pages, and the
# systemd units in $(UNITDIR) (a directory of systemd's search path for /usr and /usr/local alike),
# with the paths above written into them. PREFIX (default /usr/local) and DESTDIR (a staging root)
# as usual. The binaries come from $(BUILD)/bin (built first), or from INSTALL_BIN if set (nothing
# is built then). `make uninstall` removes what install wrote, except qbd.conf.
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
SYSCONFDIR ?= /etc
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/qbd
UNITDIR ?= $(PREFIX)/lib/systemd/system
# Proxmox VE loads storage plugins from PVE/Storage/Custom/ in its Perl library path.
PERLDIR ?= /usr/share/perl5
INSTALL_BIN ?=
MAN_PAGES := $(wildcard man/*.[1-8])
UNITS := $(wildcard systemd/*.service systemd/*.timer)

install: $(if $(INSTALL_BIN),,$(BINS))
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/qbd $(DESTDIR)$(DOCDIR) \
	  $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BIN_NAMES:%=$(or $(INSTALL_BIN),$(BUILD)/bin)/%) $(DESTDIR)$(SBINDIR)/
	install -m 0644 qbd.conf.example README.md layout-spec.md $(DESTDIR)$(DOCDIR)/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/qbd/qbd.conf ]; then \
	  echo "$(DESTDIR)$(SYSCONFDIR)/qbd/qbd.conf exists: kept (the example is in $(DOCDIR))"; \
	else \
	  echo "install -m 0644 qbd.conf.example $(DESTDIR)$(SYSCONFDIR)/qbd/qbd.conf"; \
	  install -m 0644 qbd.conf.example $(DESTDIR)$(SYSCONFDIR)/qbd/qbd.conf; \
	fi
	install -m 0644 $(filter %.5,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 $(filter %.8,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man8/
	install -d $(DESTDIR)$(PERLDIR)/PVE/Storage/Custom
	install -m 0644 proxmox/QBDPlugin.pm $(DESTDIR)$(PERLDIR)/PVE/Storage/Custom/
	@for u in $(UNITS); do \
	  echo "install -m 0644 $$u $(DESTDIR)$(UNITDIR)/"; \
	  sed -e 's|@sbindir@|$(SBINDIR)|g' -e 's|@sysconfdir@|$(SYSCONFDIR)|g' $$u \
	    >$(DESTDIR)$(UNITDIR)/$${u#systemd/}.tmp || exit 1; \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$${u#systemd/}.tmp || exit 1; \
	  mv $(DESTDIR)$(UNITDIR)/$${u#systemd/}.tmp $(DESTDIR)$(UNITDIR)/$${u#systemd/} || exit 1; \
	done

uninstall:
	rm -f $(BIN_NAMES:%=$(DESTDIR)$(SBINDIR)/%) $(UNITS:systemd/%=$(DESTDIR)$(UNITDIR)/%) \
	  $(patsubst man/%.5,$(DESTDIR)$(MANDIR)/man5/%.5,$(filter %.5,$(MAN_PAGES))) \
	  $(patsubst man/%.8,$(DESTDIR)$(MANDIR)/man8/%.8,$(filter %.8,$(MAN_PAGES)))
	rm -f $(DESTDIR)$(PERLDIR)/PVE/Storage/Custom/QBDPlugin.pm
	rm -rf $(DESTDIR)$(DOCDIR)

check-headers:
	@for h in include/qbd/*.h; do \
	  echo '#include "'$${h#include/}'"' | $(CXX) -Iinclude -Isrc -std=c++20 -fsyntax-only -x c++ - || exit 1; \
	done; echo "headers OK"

format:
	clang-format -i $$(git ls-files '*.cc' '*.h')

check-format:
	clang-format --dry-run -Werror $$(git ls-files '*.cc' '*.h')

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(BUILD)/src/bin/*/main.d
