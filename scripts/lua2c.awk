# lua2c.awk: Lua script files as C string literals, for the build.
#
#   awk -v prelude=FILE -f scripts/lua2c.awk A.lua B.lua > out.h
#
# Each file F.lua becomes `static const char lua_F[]`: the prelude's lines
# (when one is given), then the file's, each with its newline, so the
# string is exactly the bytes of prelude + file (files end in a newline).
# Only `\` and `"` need escaping; plain POSIX awk, no other tool.

function esc(s,    out, i, c) {
	out = ""
	for (i = 1; i <= length(s); i++) {
		c = substr(s, i, 1)
		if (c == "\\" || c == "\"")
			out = out "\\"
		out = out c
	}
	return out
}

function emit(s) {
	printf "\t\"%s\\n\"\n", esc(s)
}

BEGIN {
	npre = 0
	if (prelude != "") {
		while ((getline line < prelude) > 0)
			pre[npre++] = line
		close(prelude)
	}
	print "/* Generated from Lua files by scripts/lua2c.awk: do not edit. */"
}

FNR == 1 {
	if (NR > 1)
		print "\t;"
	name = FILENAME
	sub(/.*\//, "", name)
	sub(/\.lua$/, "", name)
	printf "static const char lua_%s[] __attribute__((unused)) =\n", name
	for (i = 0; i < npre; i++)
		emit(pre[i])
}

{ emit($0) }

END {
	if (NR > 0)
		print "\t;"
}
