# debate worker pool: make, make check, make install, make demo, make bench.
# GNU make.  Objects go to $(B) so sanitizer builds do not clobber the
# normal ones; the programs are linked to worker/worker and enqueue/enqueue.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(PREFIX)/bin
SBINDIR = $(PREFIX)/sbin
MANDIR = $(PREFIX)/share/man
DATADIR = $(PREFIX)/share/debate
SYSCONFDIR ?= /etc
UNITDIR ?= /lib/systemd/system

CC ?= cc
CFLAGS ?= -O2 -g
WARNINGS = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wpointer-arith -Wformat=2 -Wno-format-nonliteral -Wno-format-truncation \
	-Wcast-qual -Wwrite-strings -Wundef -Wvla -Wimplicit-fallthrough
ifneq (,$(findstring clang,$(CC)))
WARNINGS += -Wno-unknown-warning-option
endif
ALL_CFLAGS = -std=gnu11 -D_GNU_SOURCE -Ishared -I$(B)/gen $(WARNINGS) $(CFLAGS) $(SAN_CFLAGS)
ALL_LDFLAGS = $(LDFLAGS) $(SAN_CFLAGS)
# An illegal job state transition is fatal in the sanitizer builds (and
# with STRICT_STATES=1), logged and refused otherwise (worker/job.c).
STRICT_STATES ?= $(if $(SAN_CFLAGS),1,)
ifeq ($(STRICT_STATES),1)
ALL_CFLAGS += -DJOB_STRICT_STATES
endif

B ?= build
SHARED_LIBS = -lmsgpackc -linih -lm
# libsystemd, libmicrohttpd, libarchive and libcurl are loaded with dlopen()
# when used (notify.c, metrics.c, archive.c, upload.c); the unit tests make
# archives with libarchive itself.
WORKER_LIBS = -lhiredis -lev -lmd -ldl
ENQUEUE_LIBS = -lhiredis -larchive

SHARED_SRC = $(wildcard shared/*.c)
WORKER_SRC = $(wildcard worker/*.c)
ENQUEUE_SRC = $(wildcard enqueue/*.c)
UNIT_SRC = $(wildcard tests/unit/test_*.c)

SHARED_OBJ = $(SHARED_SRC:%.c=$(B)/%.o)
WORKER_OBJ = $(WORKER_SRC:%.c=$(B)/%.o)
ENQUEUE_OBJ = $(ENQUEUE_SRC:%.c=$(B)/%.o)
UNIT_OBJ = $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%.o)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)

ifeq ($(B),build)
WORKER_BIN = worker/worker
ENQUEUE_BIN = enqueue/enqueue
else
WORKER_BIN = $(B)/worker/worker
ENQUEUE_BIN = $(B)/enqueue/enqueue
endif

PY = /usr/bin/python3

# make V=1 shows the full commands.
ifeq ($(V),1)
Q =
say = @true
else
Q = @
say = @printf '  %-6s %s\n'
endif

.PHONY: all deps check unit integration fuzz fuzz-check asan bench demo install \
	uninstall clean format lint image docs

all: $(WORKER_BIN) $(ENQUEUE_BIN) $(UNIT_BIN)

# The Lua scripts, as C strings: each worker script is worker/lua/prelude.lua
# followed by its own file (scripts/lua2c.awk); enqueue's stand alone.
WORKER_LUA = claim emit finish refuse beat release
WORKER_LUA_SRC = $(WORKER_LUA:%=worker/lua/%.lua)
ENQUEUE_LUA_SRC = shared/lua/submit.lua enqueue/lua/retry_dead.lua

$(B)/gen/worker_lua.h: worker/lua/prelude.lua $(WORKER_LUA_SRC) scripts/lua2c.awk
	@mkdir -p $(dir $@)
	$(say) GEN $@
	$(Q)awk -v prelude=worker/lua/prelude.lua -f scripts/lua2c.awk $(WORKER_LUA_SRC) > $@.tmp && mv $@.tmp $@

$(B)/gen/enqueue_lua.h: $(ENQUEUE_LUA_SRC) scripts/lua2c.awk
	@mkdir -p $(dir $@)
	$(say) GEN $@
	$(Q)awk -f scripts/lua2c.awk $(ENQUEUE_LUA_SRC) > $@.tmp && mv $@.tmp $@

# Header dependencies: each compile writes a .d file next to its output
# (-MMD: the headers it read, the generated Lua headers included; -MP: a
# phony target per header, so a header that is gone does not stop make).
# A header edit rebuilds exactly what includes it.  On the first build no
# .d exists yet, so the generated headers are order-only prerequisites:
# made before anything compiles, without making every object depend on them.
# An object whose .d is missing (a build tree from before, a .d deleted) is
# compiled again: the .d is a prerequisite with an empty rule.  The touch
# keeps each object newer than its .d.
DEPFLAGS = -MMD -MP -MF $@.d -MT $@
DEPFILES = $(SHARED_OBJ:=.d) $(WORKER_OBJ:=.d) $(ENQUEUE_OBJ:=.d) $(UNIT_OBJ:=.d)
$(DEPFILES):
-include $(wildcard $(DEPFILES))

$(WORKER_OBJ): | $(B)/gen/worker_lua.h
$(ENQUEUE_OBJ): | $(B)/gen/enqueue_lua.h

$(B)/%.o: %.c $(B)/%.o.d
	@mkdir -p $(dir $@)
	$(say) CC $<
	$(Q)$(CC) $(ALL_CFLAGS) $(DEPFLAGS) -c $< -o $@ && touch $@

# rm first: ar would keep the members of sources that were renamed or removed.
$(B)/libshared.a: $(SHARED_OBJ)
	$(Q)rm -f $@ && $(AR) rcs $@ $^

$(WORKER_BIN): $(WORKER_OBJ) $(B)/libshared.a
	@mkdir -p $(dir $@)
	$(say) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $(WORKER_OBJ) $(B)/libshared.a $(WORKER_LIBS) $(SHARED_LIBS)

$(ENQUEUE_BIN): $(ENQUEUE_OBJ) $(B)/libshared.a
	@mkdir -p $(dir $@)
	$(say) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $(ENQUEUE_OBJ) $(B)/libshared.a $(ENQUEUE_LIBS) $(SHARED_LIBS)

# Unit tests link the shared library and, for worker modules, an archive
# of the worker's objects without main(): only what a test uses is pulled.
WORKER_LIB_OBJ = $(filter-out $(B)/worker/main.o,$(WORKER_OBJ))
$(B)/libworker.a: $(WORKER_LIB_OBJ)
	$(Q)rm -f $@ && $(AR) rcs $@ $^

# A test's object depends on the headers it reads (its .d), its program
# on the archives: a worker change relinks the tests, a header compiles
# only the tests that include it.
$(UNIT_OBJ): $(B)/tests/%.o: tests/unit/%.c $(B)/tests/%.o.d
	@mkdir -p $(dir $@)
	$(say) CC $<
	$(Q)$(CC) $(ALL_CFLAGS) -Iworker $(DEPFLAGS) -c $< -o $@ && touch $@

$(UNIT_BIN): $(B)/tests/%: $(B)/tests/%.o $(B)/libworker.a $(B)/libshared.a
	$(say) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $< $(B)/libworker.a $(B)/libshared.a \
		-lcmocka -larchive $(WORKER_LIBS) $(SHARED_LIBS)

deps:
	@bash scripts/install-deps

# The whole suite: unit tests, a bounded fuzz run, the integration and
# fault tests against real redis-server, podman and dockerd, then the same
# again under AddressSanitizer and UBSan.
check: deps all
	@bash tests/run-unit $(B)
	@$(MAKE) --no-print-directory fuzz-check
	@bash tests/run-integration $(WORKER_BIN) $(ENQUEUE_BIN)
	@$(MAKE) --no-print-directory asan

unit: all
	@bash tests/run-unit $(B)

integration: all
	@bash tests/run-integration $(WORKER_BIN) $(ENQUEUE_BIN)

FUZZ_SECONDS ?= 60
fuzz-check:
	@bash tests/fuzz/run $(FUZZ_SECONDS)

fuzz:
	@bash tests/fuzz/run 0

asan:
	@$(MAKE) --no-print-directory B=build/asan CC=clang CFLAGS="-O1 -g -fno-omit-frame-pointer" \
		SAN_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all" all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		bash tests/run-unit build/asan
	@ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 DEBATE_SANITIZED=1 \
		bash tests/run-integration build/asan/worker/worker build/asan/enqueue/enqueue -m "not slow"

# The benchmark's helper: the raw posix_spawn ceiling it compares dispatch with.
$(B)/bench/spawn_ceiling: scripts/bench.d/spawn_ceiling.c
	@mkdir -p $(dir $@)
	$(say) CC $<
	$(Q)$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

bench: all $(B)/bench/spawn_ceiling
	@bash scripts/bench

demo: deps all
	@bash scripts/demo

image:
	@bash scripts/make-test-image all

# Man pages from their scdoc sources.
MANPAGES = docs/worker.8 docs/enqueue.1 docs/worker.ini.5
docs: $(MANPAGES)

docs/%: docs/%.scd
	scdoc < $< > $@.tmp && mv $@.tmp $@

install: all docs
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSCONFDIR)/debate \
		$(DESTDIR)$(DATADIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 755 $(WORKER_BIN) $(DESTDIR)$(SBINDIR)/debate-worker
	install -m 755 $(ENQUEUE_BIN) $(DESTDIR)$(BINDIR)/enqueue
	test -e $(DESTDIR)$(SYSCONFDIR)/debate/worker.ini || \
		install -m 640 worker.ini $(DESTDIR)$(SYSCONFDIR)/debate/worker.ini
	install -m 644 scripts/Containerfile $(DESTDIR)$(DATADIR)/Containerfile
	install -m 644 shared/PROTOCOL.md $(DESTDIR)$(DATADIR)/PROTOCOL.md
	install -m 644 shared/lua/submit.lua $(DESTDIR)$(DATADIR)/submit.lua
	sed -e 's|/usr/local/sbin/|$(SBINDIR)/|' -e 's|/etc/debate/|$(SYSCONFDIR)/debate/|g' \
		scripts/debate-worker@.service > $(DESTDIR)$(UNITDIR)/debate-worker@.service
	chmod 644 $(DESTDIR)$(UNITDIR)/debate-worker@.service
	for m in docs/*.1 docs/*.5 docs/*.8; do \
		[ -e "$$m" ] || continue; \
		install -m 644 $$m $(DESTDIR)$(MANDIR)/man$${m##*.}/; done

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/debate-worker $(DESTDIR)$(BINDIR)/enqueue \
		$(DESTDIR)$(UNITDIR)/debate-worker@.service $(DESTDIR)$(DATADIR)/Containerfile \
		$(DESTDIR)$(DATADIR)/PROTOCOL.md $(DESTDIR)$(DATADIR)/submit.lua $(DESTDIR)$(MANDIR)/man1/enqueue.1 \
		$(DESTDIR)$(MANDIR)/man5/worker.ini.5 $(DESTDIR)$(MANDIR)/man8/worker.8

format:
	clang-format -i shared/*.[ch] worker/*.[ch] enqueue/*.[ch] tests/unit/*.c

# C (cppcheck), Lua (luac5.1 -p: each worker script as it is sent, after
# prelude.lua) and Python (pyflakes: the client, the tests, the scripts;
# pyflakes also reads the files without .py that start with a python #!).
LINT_PY = shared/python tests scripts

lint:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for f in $(WORKER_LUA_SRC); do \
		cat worker/lua/prelude.lua $$f > $$tmp/$$(basename $$f); luac5.1 -p $$tmp/$$(basename $$f); done; \
	for f in $(ENQUEUE_LUA_SRC); do luac5.1 -p $$f; done
	@# cppcheck reads no system header: it is given sys/queue.h, so that it
	@# knows TAILQ_FOREACH; config.c stores a value through a pointer to its
	@# field cast by the field's type, on purpose.
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability -Ishared \
		--include="$$(echo '#include <sys/queue.h>' | $(CC) -M -xc - | tr ' \\' '\n\n' | grep 'sys/queue\.h$$')" \
		--suppress=invalidPointerCast:shared/config.c shared worker enqueue
	$(PY) -m pyflakes $(LINT_PY)

clean:
	rm -rf build worker/worker enqueue/enqueue $(MANPAGES)
