#!/bin/bash
# What a packager gets from `meson install`: both commands, a man page for
# each (renders without groff warnings), bash completion of the
# subcommands; --version prints meson's project() version.
set -euo pipefail
: "${BUILDDIR:?}"
for p in jq groff; do command -v $p >/dev/null || { echo "SKIP: no $p" >&2; exit 77; }; done
. "$SRCDIR/tests/lib/common.sh"
tmpdir T

meson install -C "$BUILDDIR" --no-rebuild --quiet --destdir "$T/root" >"$T/install.log" 2>&1 ||
    fail "meson install: $(cat "$T/install.log")"
opt() { meson introspect "$BUILDDIR" --buildoptions | jq -r ".[] | select(.name == \"$1\") | .value"; }
prefix=$(opt prefix)
R=$T/root$prefix
bindir=$R/$(opt bindir)
mandir=$R/$(opt mandir)
compdir=$R/$(opt datadir)/bash-completion/completions
version=$(meson introspect "$BUILDDIR" --projectinfo | jq -r .version)

for cmd in clusterfs vdisk; do
    [ -x "$bindir/$cmd" ] || fail "$cmd not installed in $bindir"
    [ -f "$mandir/man1/$cmd.1" ] || fail "man page $cmd.1 not installed in $mandir/man1"
    [ -f "$compdir/$cmd" ] || fail "bash completion of $cmd not installed in $compdir"
    # --version: meson's project() version, as qemu-img --version prints its own
    out=$("$bindir/$cmd" --version) || fail "$cmd --version exit status"
    [ "$out" = "$cmd version $version" ] || [[ $out == "$cmd version $version "* ]] ||
        fail "$cmd --version: '$out', expected version $version"
    [ "$("$bindir/$cmd" -V)" = "$out" ] || fail "$cmd -V differs from --version"
    # the man page renders, without warnings, and has the usual sections
    warn=$(groff -man -Tutf8 -ww -z "$mandir/man1/$cmd.1" 2>&1) || fail "groff $cmd.1"
    [ -z "$warn" ] || fail "$cmd.1: groff warnings: $warn"
    text=$(groff -man -Tutf8 "$mandir/man1/$cmd.1" 2>/dev/null | col -b)
    for s in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" "SEE ALSO"; do
        grep -q "^$s" <<<"$text" || fail "$cmd.1 has no $s section"
    done
done

# complete CMD WORD...: what bash completion offers for the last word.
complete_words() {
    local file=$compdir/$1
    bash -c '
        . "$0"
        COMP_WORDS=("${@}")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        _$1
        printf "%s\n" "${COMPREPLY[@]}" | sort
    ' "$file" "${@:2}"
}
words() { tr ' ' '\n' | grep . | sort; }

# clusterfs: the subcommands of `clusterfs --help`, and each is a command
got=$(complete_words clusterfs clusterfs "" | grep -v '^-')
want=$("$bindir/clusterfs" --help | awk '/^commands:/{c=1; next} c && /^  [a-z]/{print $1} /^$/{if (c) exit}' | sort -u)
[ -n "$want" ] || fail "no commands in clusterfs --help"
[ "$got" = "$want" ] || fail "clusterfs completion offers '$(echo $got)', --help lists '$(echo $want)'"
for sub in $got; do
    "$bindir/clusterfs" "$sub" --help >/dev/null || fail "completed 'clusterfs $sub' is not a command"
done
[ "$(complete_words clusterfs clusterfs lun "")" = "$(echo "--help info" | words)" ] || fail "lun subcommands"
[ "$(complete_words clusterfs clusterfs locks init --h)" = "$(echo "--help --hosts" | words)" ] ||
    fail "locks init options: $(complete_words clusterfs clusterfs locks init --h)"
[ "$(complete_words clusterfs clusterfs paths --policy "")" = \
  "$(echo "fixed mru round-robin service-time" | words)" ] || fail "--policy values"

# vdisk: the commands of its dispatch table, each with a --help
got=$(complete_words vdisk vdisk "" | grep -v '^-')
[ "$got" = "$(echo "check clone convert create info map resize serve snapshot" | words)" ] ||
    fail "vdisk completion offers '$(echo $got)'"
for sub in $got; do
    "$bindir/vdisk" "$sub" --help >/dev/null || fail "completed 'vdisk $sub' has no --help"
done
for sub in $("$bindir/vdisk" --help | awk '/^  [a-z]/{print $1}'); do
    grep -qx "$sub" <<<"$got" || fail "vdisk --help lists '$sub', completion does not"
done
[ "$(complete_words vdisk vdisk snapshot "")" = "$(echo "create delete list revert" | words)" ] ||
    fail "snapshot subcommands"
[ "$(complete_words vdisk vdisk create --type "")" = "$(echo "eager-zeroed stream thick thin" | words)" ] ||
    fail "--type values"
# Every long option a --help names is offered by completion somewhere (no
# drift). vdisk's simple commands share one usage text, and `clusterfs
# locks --help` covers `locks init`: compare the unions.
longopts() { grep -o -- '--[a-z][a-z-]*' | sort -u; }
check_opts() { # CMD "SUB..."...
    local cmd=$1; shift
    local helped offered missing sub
    helped=$(for sub in "$@"; do "$bindir/$cmd" $sub --help; done | longopts)
    offered=$( (complete_words "$cmd" "$cmd" -
                for sub in "$@"; do complete_words "$cmd" "$cmd" $sub --; done) | longopts)
    missing=$(comm -23 <(echo "$helped") <(echo "$offered"))
    [ -z "$missing" ] || fail "$cmd: --help names $(echo $missing), completion does not offer it"
}
check_opts clusterfs "lun info" paths locks "locks init"
check_opts vdisk create info check map convert resize clone serve "snapshot list"
echo "ok: installed binaries, man pages and completion; --version $version"
