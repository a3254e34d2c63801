#!/bin/sh
# sysinfo: an example Shell tool that reports the sandbox it runs in: who it runs as, where it
# may write, the names in its environment, and a checksum of its input. Its stdout and stderr
# lines come back apart in the envelope (`stdout`, `stderr`); its result is output.json.
#
# Only POSIX sh and commands every tier's default root has (busybox applets on the microVM guest
# root, which is also the Oci tier's runtime root): id, hostname, uname, env, cut, sort, sed,
# sha256sum.
set -u

# js prints $1 as a JSON string (what this tool reports is paths, names and numbers: escaping
# backslash and double quote is enough).
js() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

# Where the tool may create a file.
writable=""
for d in / /etc /root /tmp /var/tmp /dev/shm /axocoatl /axocoatl/tool; do
	f="$d/.sysinfo.$$"
	if (: > "$f") 2>/dev/null; then
		rm -f "$f"
		writable="$writable${writable:+,}$(js "$d")"
	fi
done

env_names=""
for n in $(env | cut -d= -f1 | sort -u); do
	env_names="$env_names${env_names:+,}$(js "$n")"
done

echo "sysinfo: probing done" >&2
{
	printf '{"uid":%s,"gid":%s,"groups":%s,"cwd":%s,"hostname":%s,"kernel":%s,' \
		"$(id -u)" "$(id -g)" "$(js "$(id -G)")" "$(js "$(pwd)")" "$(js "$(hostname)")" "$(js "$(uname -r)")"
	printf '"path":%s,"home":%s,"greeting":%s,"writable":[%s],"env":[%s],"input_sha256":%s}\n' \
		"$(js "$PATH")" "$(js "${HOME:-}")" "$(js "${GREETING:-}")" "$writable" "$env_names" \
		"$(js "$(sha256sum < /axocoatl/input.json | cut -d' ' -f1)")"
} > /axocoatl/output.json
echo "sysinfo: wrote /axocoatl/output.json"
