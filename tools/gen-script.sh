#!/bin/sh
# Regenerates src/rules_script.c from src/rules_script.lua, the script's
# source of truth (or writes it to the file given as argument).  Both are
# committed; t/010-unit.t checks that they agree.
set -eu
dir=$(dirname "$0")/..
lua="$dir/src/rules_script.lua"
out="${1:-$dir/src/rules_script.c}"
{
    printf '/*\n * Generated from rules_script.lua by tools/gen-script.sh: edit the\n'
    printf ' * .lua file and run "make script".\n */\n\n'
    printf '#include "rules_state.h"\n\n\n'
    printf 'const char  rules_script_text[] =\n'
    sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/    "/' -e 's/$/\\n"/' "$lua"
    printf '    ;\n'
} > "$out.tmp"
mv "$out.tmp" "$out"
