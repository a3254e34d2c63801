#!/bin/sh
# harden.sh: what systemd would do to the daemon of packaging/axoiso.service, for a test on a
# machine where systemd is not PID 1: ProtectSystem=strict with ReadWritePaths and ProtectHome,
# then exec CMD (the test makes CMD a setpriv of the unit's NoNewPrivileges and
# CapabilityBoundingSet). Run it in a mount namespace of its own (unshare -m --propagation
# private): the read-only remounts stay there.
#
# usage: harden.sh "READ_WRITE_PATHS" CMD...
set -eu
rw=$1; shift
# ProtectSystem=strict: every mount read-only but the API file systems.
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || echo "harden: cannot make $m read-only" >&2
done
# ReadWritePaths (a leading - : may be missing).
for p in $rw; do
  p=${p#-}
  [ -e "$p" ] || continue
  mount --bind "$p" "$p"
  mount -o remount,bind,rw "$p"
done
# ProtectHome=yes
for h in /home /root /run/user; do
  if [ -d "$h" ]; then mount -t tmpfs -o ro,mode=0755 tmpfs "$h"; fi
done
exec "$@"
