#!/usr/bin/env bash
# `make install`: the tree it writes under DESTDIR (tools, qbd.conf written once and never
# overwritten, the example, man pages that render and name every option and exit status of the
# tools' --help, systemd units that `systemd-analyze verify` accepts and whose qbd-verify command
# lines work under the units' capability bounding set), qbd-master's sd_notify (READY=1 once it
# serves NBD, STOPPING=1 at SIGTERM; run under that unit's bounding set) and make uninstall.
# Installs the binaries of the build under test (QBD_BIN): nothing is built.
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$IT_DIR/../.." && pwd)
D=$T/root
UNITS="qbd-master.service qbd-verify.service qbd-verify.timer qbd-verify-deep.service qbd-verify-deep.timer"
TOOLS="qbd-master qbd-verify qbd-repair qbdctl"
MAN8="qbd-master qbd-verify qbd-repair qbdctl"

install_into() { # LOG MAKE_ARGS...: make install with the binaries of QBD_BIN
  local log=$1
  shift
  make -C "$ROOT" --no-print-directory install INSTALL_BIN="$QBD_BIN" "$@" >"$log" 2>&1
}

# --- the tree -------------------------------------------------------------------------------------
if install_into "$T/install1.log" DESTDIR="$D" PREFIX=/usr; then
  pass "make install DESTDIR PREFIX=/usr"
else
  show "$T/install1.log"
  die "make install DESTDIR PREFIX=/usr" "make exited with an error"
fi

bad=""
for t in $TOOLS; do
  [ -f "$D/usr/sbin/$t" ] && [ -x "$D/usr/sbin/$t" ] || bad+=" usr/sbin/$t is not an executable file;"
  cmp -s "$QBD_BIN/$t" "$D/usr/sbin/$t" || bad+=" usr/sbin/$t differs from $QBD_BIN/$t;"
  "$D/usr/sbin/$t" --help >/dev/null 2>&1 || bad+=" usr/sbin/$t --help fails;"
done
for f in etc/qbd/qbd.conf usr/share/doc/qbd/qbd.conf.example usr/share/man/man5/qbd.conf.5; do
  [ -f "$D/$f" ] || bad+=" $f is missing;"
done
for m in $MAN8; do [ -f "$D/usr/share/man/man8/$m.8" ] || bad+=" man8/$m.8 is missing;"; done
for u in $UNITS; do [ -f "$D/usr/lib/systemd/system/$u" ] || bad+=" unit $u is missing;"; done
cmp -s "$ROOT/qbd.conf.example" "$D/etc/qbd/qbd.conf" || bad+=" etc/qbd/qbd.conf is not qbd.conf.example;"
cmp -s "$ROOT/proxmox/QBDPlugin.pm" "$D/usr/share/perl5/PVE/Storage/Custom/QBDPlugin.pm" ||
  bad+=" the Proxmox plugin is not usr/share/perl5/PVE/Storage/Custom/QBDPlugin.pm;"
stray=$(cd "$D" && find . -type f | grep -vE '^\./(usr/sbin/|etc/qbd/qbd\.conf$|usr/share/doc/qbd/|usr/share/man/man[58]/|usr/lib/systemd/system/|usr/share/perl5/PVE/Storage/Custom/QBDPlugin\.pm$)')
[ -z "$stray" ] || bad+=" files outside the expected places: $stray;"
[ -z "$bad" ] && pass "installed tree: tools in sbin, qbd.conf, doc, man pages, units" ||
  fail "installed tree" "$bad"

# A second install keeps the admin's qbd.conf and rewrites everything else.
echo "# the admin's edit" >>"$D/etc/qbd/qbd.conf"
cp "$D/etc/qbd/qbd.conf" "$T/conf.edited"
echo "garbage" >"$D/usr/share/man/man8/qbdctl.8"
if ! install_into "$T/install2.log" DESTDIR="$D" PREFIX=/usr; then
  show "$T/install2.log"
  fail "second make install" "make exited with an error"
elif ! cmp -s "$T/conf.edited" "$D/etc/qbd/qbd.conf"; then
  fail "second make install" "it changed the existing /etc/qbd/qbd.conf"
elif ! grep -q 'qbd.conf exists: kept' "$T/install2.log"; then
  show "$T/install2.log"
  fail "second make install" "it does not say that it kept qbd.conf"
elif ! cmp -s "$ROOT/man/qbdctl.8" "$D/usr/share/man/man8/qbdctl.8"; then
  fail "second make install" "it did not rewrite the man page"
else
  pass "second make install keeps the admin's qbd.conf and rewrites the rest"
fi

# --- man pages --------------------------------------------------------------------------------------
# Each page has its header and sections; with groff (groff-base, which man-db needs) it renders
# without a warning. Every long option and every exit status of a tool's --help is in its page.
if command -v groff >/dev/null; then renderer=groff; else renderer="none (groff is not installed)"; fi
echo "    | man pages rendered with: $renderer"
bad=""
for page in $MAN8 qbd.conf; do
  if [ "$page" = qbd.conf ]; then sec=5; else sec=8; fi
  f=$D/usr/share/man/man$sec/$page.$sec
  upper=$(echo "$page" | tr '[:lower:]' '[:upper:]')
  head -n 1 "$f" | grep -qE "^\.TH $upper $sec " || bad+=" $page.$sec: no .TH $upper $sec line;"
  for s in NAME SYNOPSIS DESCRIPTION "SEE ALSO"; do
    grep -qx "\.SH \"\?$s\"\?" "$f" || bad+=" $page.$sec: no $s section;"
  done
  [ $sec = 8 ] && { grep -qx '\.SH "\?EXIT STATUS"\?' "$f" || bad+=" $page.$sec: no EXIT STATUS section;"; }
  if [ "$renderer" = groff ]; then
    out=$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -P-cbou "$f" 2>"$T/groff.err")
    [ -s "$T/groff.err" ] && bad+=" $page.$sec: groff warns: $(head -n 3 "$T/groff.err");"
    grep -q "^NAME" <<<"$out" && grep -q "$page" <<<"$out" || bad+=" $page.$sec: renders without NAME;"
  fi
done
for t in $TOOLS; do
  f=$D/usr/share/man/man8/$t.8
  help=$("$QBD_BIN/$t" --help 2>&1)
  for o in $(grep -oE -- '--[a-z][a-z-]+' <<<"$help" | sort -u); do
    grep -qF -- "${o//-/\\-}" "$f" || bad+=" $t.8 lacks $o of --help;"
  done
  # "Exit status: 0 ...; 1 ...; 2 ..." in --help; ".B N" items in the page's EXIT STATUS section.
  want=$(sed -n '/^Exit status:/,$p' <<<"$help" | tr '\n' ' ' | grep -oE '(status:|;) [0-9]+ ' |
    grep -oE '[0-9]+' | sort -u | tr '\n' ' ')
  got=$(sed -n '/^\.SH "\?EXIT STATUS/,/^\.SH/p' "$f" | grep -E '^\.B [0-9]+$' | awk '{print $2}' |
    sort -u | tr '\n' ' ')
  [ -n "$want" ] && [ "$want" = "$got" ] || bad+=" $t.8: exit statuses '$got', --help says '$want';"
done
# qbdctl: every command of its usage is in the page.
for c in $("$QBD_BIN/qbdctl" --help | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && /^  [a-z]/ {print $1}' | sort -u); do
  grep -qE "^\.(B|BI) \"?$c\b" "$D/usr/share/man/man8/qbdctl.8" || bad+=" qbdctl.8 lacks the command $c;"
done
# qbd.conf(5): every key that qbd.conf.example sets or shows commented out.
for k in $(grep -oE '^#?[a-z_]+ =' "$ROOT/qbd.conf.example" | tr -d '#= ' | sort -u); do
  grep -qE "^\.(B|BR|BI) \"?$k\b" "$D/usr/share/man/man5/qbd.conf.5" || bad+=" qbd.conf.5 lacks the key $k;"
done
[ -z "$bad" ] && pass "man pages: sections, render, every option, command, key and exit status" ||
  fail "man pages" "$bad"

# --- systemd units ------------------------------------------------------------------------------------
# systemd-analyze verify needs the ExecStart binaries where the units name them, so the units are
# verified as installed with PREFIX inside $T (no DESTDIR); they are the DESTDIR ones with that
# prefix. MANPATH lets it find the Documentation= man pages.
if install_into "$T/install3.log" PREFIX="$T/usr" SYSCONFDIR="$T/etc"; then
  bad=""
  for u in $UNITS; do
    sed -e "s|$T/usr/|/usr/|g" -e "s|$T/etc/|/etc/|g" "$T/usr/lib/systemd/system/$u" >"$T/unit.cmp"
    cmp -s "$T/unit.cmp" "$D/usr/lib/systemd/system/$u" || bad+=" $u differs beyond its paths;"
    grep -q '@[a-z]*dir@' "$D/usr/lib/systemd/system/$u" && bad+=" $u keeps a @...@ placeholder;"
  done
  [ -z "$bad" ] && pass "units name the installed paths" || fail "units name the installed paths" "$bad"
  if command -v man >/dev/null; then man_check=yes; else man_check=no; fi
  echo "    | systemd-analyze verify --man=$man_check"
  bad=""
  for u in $UNITS; do
    if ! (cd "$T/usr/lib/systemd/system" && MANPATH="$T/usr/share/man" \
      systemd-analyze verify --man=$man_check "./$u") >"$T/verify-$u.log" 2>&1 ||
      [ -s "$T/verify-$u.log" ]; then
      bad+=" $u: $(head -n 5 "$T/verify-$u.log");"
    fi
  done
  [ -z "$bad" ] && pass "systemd-analyze verify on every unit" || fail "systemd-analyze verify" "$bad"
else
  show "$T/install3.log"
  fail "make install PREFIX=\$T/usr" "make exited with an error"
fi

U=$D/usr/lib/systemd/system
# unit_priv UNIT: the setpriv(1) prefix that gives a command the unit's NoNewPrivileges and
# CapabilityBoundingSet, so that the tools run below with what their unit leaves them.
unit_priv() {
  local caps
  caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$U/$1" | tr ' ' '\n' | sed -n 's/^CAP_\(.*\)/+\L\1/p' |
    paste -sd, -)
  grep -qx 'NoNewPrivileges=yes' "$U/$1" && [ -n "$caps" ] || return 1
  echo "setpriv --no-new-privs --bounding-set -all,$caps --inh-caps -all"
}
bad=""
grep -qx 'Type=notify' "$U/qbd-master.service" || bad+=" qbd-master.service is not Type=notify;"
grep -qx 'Restart=on-failure' "$U/qbd-master.service" || bad+=" qbd-master.service: no Restart=on-failure;"
grep -qx 'ExecStart=/usr/sbin/qbd-master --config /etc/qbd/qbd.conf' "$U/qbd-master.service" ||
  bad+=" qbd-master.service: ExecStart;"
grep -qx 'OnCalendar=hourly' "$U/qbd-verify.timer" || bad+=" qbd-verify.timer is not hourly;"
grep -qE '^OnCalendar=Sun ' "$U/qbd-verify-deep.timer" || bad+=" qbd-verify-deep.timer is not weekly;"
grep -qE '^ExecStart=.* --deep .*--rate [0-9]+' "$U/qbd-verify-deep.service" ||
  bad+=" qbd-verify-deep.service: no --deep with --rate;"
grep -E '^ExecStart=' "$U/qbd-verify.service" | grep -q -- '--deep' && bad+=" qbd-verify.service is deep;"
[ -z "$bad" ] && pass "units: notify daemon restarted on failure, hourly quick and weekly deep verify with a rate" ||
  fail "unit contents" "$bad"

# The verify units' command lines, run as they are (with this test's qbd.conf): exit 0 on a clean
# volume, 1 when a chunk file is gone.
qbd_conf 3
qbdctl create v --size 16M --replicas 3 >/dev/null || die setup "qbdctl create v failed"
qbd_start
python3 -c "
import nbd; h = nbd.NBD(); h.connect_uri('$(uri v)'); h.pwrite(b'\x5a' * 65536, 0); h.flush()" ||
  die setup "writing to volume v failed"
qbd_stop || die setup "qbd-master did not stop"
bad=""
for u in qbd-verify.service qbd-verify-deep.service; do
  read -r -a cmd <<<"$(sed -n 's/^ExecStart=//p' "$U/$u")"
  cmd=("$QBD_BIN/$(basename "${cmd[0]}")" "${cmd[@]:1}")
  cmd=("${cmd[@]/\/etc\/qbd\/qbd.conf/$T/qbd.conf}")
  timeout 120 $(unit_priv $u) "${cmd[@]}" >"$T/$u.out" 2>&1
  rc=$?
  [ $rc = 0 ] || bad+=" $u on a clean volume: exit $rc ($(head -n 3 "$T/$u.out"));"
done
rm -f "$(chunk_path node-b 1 b 0)"
for u in qbd-verify.service qbd-verify-deep.service; do
  read -r -a cmd <<<"$(sed -n 's/^ExecStart=//p' "$U/$u")"
  cmd=("$QBD_BIN/$(basename "${cmd[0]}")" "${cmd[@]:1}")
  cmd=("${cmd[@]/\/etc\/qbd\/qbd.conf/$T/qbd.conf}")
  timeout 120 $(unit_priv $u) "${cmd[@]}" >"$T/$u.out" 2>&1
  rc=$?
  [ $rc = 1 ] || bad+=" $u with a chunk file gone: exit $rc, not 1;"
  grep -q DEGRADED "$T/$u.out" || bad+=" $u with a chunk file gone: no DEGRADED line;"
done
[ -z "$bad" ] && pass "the verify units' command lines: 0 when clean, 1 and the volume when degraded" ||
  fail "verify units' command lines" "$bad"

# --- sd_notify ----------------------------------------------------------------------------------------
# A unix datagram socket in the place of systemd's: each message is logged; on READY=1 the listener
# connects to the NBD port at once and logs whether the server greets it (it must: READY=1 comes
# after the listeners are up).
cat >"$T/notify.py" <<'EOF'
import os, socket, sys
path, log, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path + ".tmp")
os.rename(path + ".tmp", path)
with open(log, "w", buffering=1) as out:
    while True:
        msg = s.recv(65536).decode(errors="replace")
        for line in msg.split("\n"):
            out.write(f"MSG {line}\n")
        if "READY=1" in msg.split("\n"):
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                greeting = c.recv(8)
                c.close()
                out.write(f"AT-READY greeting {greeting!r}\n")
            except OSError as e:
                out.write(f"AT-READY no server: {e}\n")
EOF
python3 "$T/notify.py" "$T/notify.sock" "$T/notify.log" "$PORT" >"$T/notify.out" 2>&1 &
NPID=$!
track $NPID
wait_until 10 test -S "$T/notify.sock" || { show "$T/notify.out"; die "sd_notify" "the listener did not start"; }
# qbd-master runs with the unit's NoNewPrivileges, capability bounding set and umask, and serves.
priv=$(unit_priv qbd-master.service) || die "sd_notify" "qbd-master.service: no NoNewPrivileges or CapabilityBoundingSet"
echo "    | qbd-master runs under: $priv, umask ${um:-0022}"
echo "=== $(date +%T.%N) start with NOTIFY_SOCKET" >>"$T/master.log"
um=$(sed -n 's/^UMask=//p' "$U/qbd-master.service")
(
  umask "${um:-0022}"
  NOTIFY_SOCKET=$T/notify.sock exec $priv "$QBD_BIN/qbd-master" --config "$T/qbd.conf"
) </dev/null >>"$T/master.log" 2>&1 &
MASTER_PID=$!
track "$MASTER_PID"
if ! wait_until 20 timeout 5 nbdinfo --list "nbd://127.0.0.1:$PORT"; then
  show "$T/master.log"
  die "sd_notify" "qbd-master does not serve within 20 s"
fi
if wait_until 10 grep -q '^AT-READY' "$T/notify.log" &&
  grep -q "^AT-READY greeting b'NBDMAGIC'" "$T/notify.log"; then
  pass "sd_notify: READY=1 once qbd-master serves NBD"
else
  show "$T/notify.log"
  fail "sd_notify READY=1" "no READY=1, or the NBD port did not greet when it came"
fi
grep -q '^MSG STATUS=serving ' "$T/notify.log" && pass "sd_notify: STATUS=serving" ||
  fail "sd_notify STATUS" "no STATUS=serving line"
grep -q '^MSG STOPPING=1' "$T/notify.log" && fail "sd_notify STOPPING=1" "STOPPING=1 before any signal"
qbd_stop TERM
if wait_until 10 grep -q '^MSG STOPPING=1' "$T/notify.log"; then
  if [ "$(grep -nE '^MSG (READY|STOPPING)=1' "$T/notify.log" | cut -d= -f1 | sed 's/.*MSG //' | tr '\n' ' ')" = "READY STOPPING " ]; then
    pass "sd_notify: STOPPING=1 at SIGTERM, after READY=1"
  else
    show "$T/notify.log"
    fail "sd_notify STOPPING=1" "READY=1 and STOPPING=1 are not once each in that order"
  fi
else
  show "$T/notify.log"
  fail "sd_notify STOPPING=1" "no STOPPING=1 after SIGTERM"
fi
kill -TERM $NPID 2>/dev/null
wait_pid $NPID 10
untrack $NPID

# make uninstall removes everything but the admin's qbd.conf.
if make -C "$ROOT" --no-print-directory uninstall DESTDIR="$D" PREFIX=/usr >"$T/uninstall.log" 2>&1; then
  left=$(cd "$D" && find . -type f | sort | tr '\n' ' ')
  [ "$left" = "./etc/qbd/qbd.conf " ] && pass "make uninstall leaves only qbd.conf" ||
    fail "make uninstall" "left: $left"
else
  show "$T/uninstall.log"
  fail "make uninstall" "make exited with an error"
fi
