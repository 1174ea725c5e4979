#!/usr/bin/env python3
"""docs/format.md against the C structs it maps.

For every on-disk struct named in a `struct NAME` heading line of
docs/format.md, the (offset, size) rows of the table that follows must be
the fields of that struct in the header that defines it, as a C compiler
lays them out (natural alignment, no packing). Adjacent reserved rows
("reserved", "pad", any row marked reserved) are merged on both sides, so a
row the doc marks as reserved for a pending field still matches. Exit 1
with the first difference of each struct; 0 if all match.
"""
import os
import re
import sys

SRC = os.environ.get("SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
HEADERS = ["locking/lockspace.h", "locking/ls_internal.h", "vdisk/vdisk_internal.h"]
BASIC = {"uint8_t": 1, "int8_t": 1, "char": 1, "uint16_t": 2, "int16_t": 2,
         "uint32_t": 4, "int32_t": 4, "uint64_t": 8, "int64_t": 8}


def read(p):
    with open(os.path.join(SRC, p)) as f:
        return f.read()


def c_structs():
    text = "\n".join(read(h) for h in HEADERS)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    macros = {m.group(1): int(m.group(2), 0)
              for m in re.finditer(r"#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)u?\b", text)}
    structs = {}
    for m in re.finditer(r"struct\s+(\w+)\s*\{([^}]*)\};", text):
        name, body = m.group(1), m.group(2)
        fields, off, align = [], 0, 1
        ok = True
        for decl in body.split(";"):
            decl = decl.strip()
            if not decl:
                continue
            d = re.fullmatch(r"(struct\s+\w+|\w+)\s+(\w+)(?:\[(\w+)\])?", decl)
            if not d:
                ok = False
                break
            typ, field, n = d.group(1), d.group(2), d.group(3)
            if typ in BASIC:
                size = a = BASIC[typ]
            elif typ.startswith("struct ") and typ[7:] in structs:
                size, a = structs[typ[7:]]["size"], structs[typ[7:]]["align"]
            else:
                ok = False
                break
            count = 1 if n is None else (int(n, 0) if n[0].isdigit() else macros.get(n))
            if count is None:
                ok = False
                break
            off = (off + a - 1) // a * a
            fields.append((off, size * count, field))
            off += size * count
            align = max(align, a)
        if ok:
            structs[name] = {"fields": fields, "size": (off + align - 1) // align * align,
                             "align": align}
    return structs


def is_reserved(name):
    n = name.strip("*` ").lower()
    return n.startswith("reserved") or n.startswith("pad")


def merge(rows):
    out = []
    for off, size, name in rows:
        r = is_reserved(name)
        if out and r and out[-1][3] and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + size, "reserved", True)
        else:
            out.append((off, size, name, r))
    return [(o, s, r) for o, s, _, r in out]


def doc_tables():
    lines = read("docs/format.md").splitlines()
    tables, current, i = {}, None, 0
    while i < len(lines):
        m = re.search(r"`struct (\w+)`", lines[i])
        if m and not lines[i].startswith("|"):
            current = m.group(1)
        if current and lines[i].startswith("| off |"):
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                rows.append((int(cells[0]), int(cells[1].split()[0]) * (
                    int(cells[1].split()[2]) if " x " in cells[1] else 1), cells[2]))
                i += 1
            tables[current] = rows
            current = None
            continue
        i += 1
    return tables


def main():
    structs, tables = c_structs(), doc_tables()
    bad = 0
    for name, rows in sorted(tables.items()):
        if name not in structs:
            print(f"docs/format.md maps struct {name}, which no header defines")
            bad += 1
            continue
        st = structs[name]
        want = merge(st["fields"])
        got = merge(rows)
        end = rows[-1][0] + rows[-1][1] if rows else 0
        if end != st["size"]:
            print(f"struct {name}: the doc's table ends at byte {end}, the struct is "
                  f"{st['size']} bytes")
            bad += 1
            continue
        for w, g in zip(want, got):
            if (w[0], w[1], w[2]) != (g[0], g[1], g[2]):
                print(f"struct {name}: C has {'reserved' if w[2] else 'a field'} at offset "
                      f"{w[0]} size {w[1]}, docs/format.md has "
                      f"{'reserved' if g[2] else 'a field'} at {g[0]} size {g[1]}")
                bad += 1
                break
        else:
            if len(want) != len(got):
                print(f"struct {name}: C has {len(want)} fields, the doc {len(got)} rows")
                bad += 1
    mapped = set(tables)
    for name in ("ls_header_disk", "ls_hb_disk", "ls_lock_disk", "ls_leader_disk",
                 "ls_dblock_disk", "vmdk4_header_disk"):
        if name not in mapped:
            print(f"docs/format.md has no table for struct {name}")
            bad += 1
    if bad:
        print("docs/format.md is the byte map of what we write: update it with the struct")
        return 1
    print(f"ok: docs/format.md matches {len(tables)} on-disk structs")
    return 0


sys.exit(main())
