#!/usr/bin/env bash
# The on-disk layout (layout-spec.md §4, format 2) as ordinary tools see it with the daemon
# stopped: a block written through NBD sits in <backend>/<volnr>/<part>/<chunk index + 1> at
# i * block_size, and its slot pair at chunk_size + i * 32: slot 0 = u64 LE generation (>= 1) and
# u64 LE check = XXH3-64 of the data (`xxhsum -H3`) XOR the address key of (volnr, chunk, block,
# generation); slot 1 empty once the daemon closed the volume (settled). Never-written blocks have
# an all-zero pair and zero data (a hole).
. "$(dirname "$0")/lib.sh"

MiB=$((1024 * 1024))
qbd_conf 3
qbdctl create lay --size 32M --replicas 3 >/dev/null || die setup "qbdctl create lay failed"
qbdctl create lay8k --size 16M --replicas 3 --block-size 8192 --chunk-size 1M >/dev/null ||
  die setup "qbdctl create lay8k failed"

# read_block PART VOLNR OFFSET BLOCK_SIZE CHUNK_SIZE: copies the block's data from part PART's
# chunk file to $T/block.bin and prints "<generation> <checksum as 16 hex digits>": slot 0's
# generation and its check with the address key taken off (the data's XXH3 when the slot holds);
# fails when slot 1 is not empty (a clean stop settles every pair, §4.5).
read_block() {
  local path
  path=$(chunk_path "node-$1" "$2" "$1" $(($3 / $5)))
  [ -f "$path" ] || { echo "no chunk file $path"; return 1; }
  python3 - "$path" "$2" $(($3 / $5)) $((($3 % $5) / $4)) "$4" "$5" "$T/block.bin" <<'EOF'
import struct, subprocess, sys
path, vol, chunk, idx, bs, cs, out = sys.argv[1], *map(int, sys.argv[2:7]), sys.argv[7]
def key(gen):  # layout-spec.md §4.2: XXH3-64 of volnr, chunk, block, generation (u64 LE)
    r = subprocess.run(["xxhsum", "-H3"], input=struct.pack("<QQQQ", vol, chunk, idx, gen), capture_output=True)
    return int(r.stdout.split()[-1], 16)
with open(path, "rb") as f:
    f.seek(idx * bs)
    data = f.read(bs).ljust(bs, b"\0")  # a sparse file may end early: that reads as zeros
    f.seek(cs + idx * 32)
    pair = f.read(32).ljust(32, b"\0")
open(out, "wb").write(data)
gen, check, gen1, check1 = struct.unpack("<QQQQ", pair)
if gen1 or check1:
    print(f"slot 1 is not empty (generation {gen1}): the pair was not settled")
    sys.exit(1)
csum = check ^ key(gen) if (gen or check) else 0
print(f"{gen} {csum:016x}")
EOF
}

is_filled() { # FILE BYTE LENGTH: FILE is BYTE repeated LENGTH times
  python3 - "$@" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
sys.exit(data != bytes([int(sys.argv[2], 0)]) * int(sys.argv[3]))
EOF
}

# expect_block PART VOLNR OFFSET BLOCK_SIZE CHUNK_SIZE BYTE [MIN_GEN]: the block holds BYTE
# repeated, its metadata has generation >= MIN_GEN (default 1) and the XXH3 of the data.
expect_block() {
  local meta gen csum where
  where="part $1: $(chunk_path "node-$1" "$2" "$1" $(($3 / $5))) block $((($3 % $5) / $4))"
  meta=$(read_block "$1" "$2" "$3" "$4" "$5") || { echo "$meta"; return 1; }
  read -r gen csum <<<"$meta"
  echo "$where: generation $gen, checksum $csum"
  if ! is_filled "$T/block.bin" "$6" "$4"; then
    echo "$where: data is not $6 repeated:"
    od -A d -t x1 "$T/block.bin" | head -4
    return 1
  fi
  [ "$gen" -ge "${7:-1}" ] || { echo "$where: generation $gen, expected >= ${7:-1}"; return 1; }
  [ "$csum" = "$(xxh3 "$T/block.bin")" ] ||
    { echo "$where: checksum $csum, xxhsum -H3 of the data $(xxh3 "$T/block.bin")"; return 1; }
}

# expect_unwritten PART VOLNR OFFSET BLOCK_SIZE CHUNK_SIZE: zero data and an all-zero slot pair
expect_unwritten() {
  local meta
  meta=$(read_block "$@") || { echo "$meta"; return 1; }
  [ "$meta" = "0 0000000000000000" ] ||
    { echo "part $1 block at $3: metadata '$meta', expected all zero (never written)"; return 1; }
  is_filled "$T/block.bin" 0 "$4" || { echo "part $1 block at $3: data is not zero"; return 1; }
}

gen_of() { # PART VOLNR OFFSET BLOCK_SIZE CHUNK_SIZE: the block's generation
  local meta
  meta=$(read_block "$@") || return 1
  echo "${meta%% *}"
}

every_part() { # FN ARGS...: FN PART ARGS... for parts a, b and c
  local l rc=0
  for l in a b c; do "$1" "$l" "${@:2}" || rc=1; done
  return $rc
}

X=$((4 * MiB + 7 * 4096))  # block 7 of chunk index 1: file 2, data at byte 7 * 4096
X8=$((2 * MiB + 5 * 8192)) # 8 KiB blocks, 1 MiB chunks: block 5 of chunk index 2: file 3
L1=(1 "$X" 4096 $((4 * MiB)))
L2=(2 "$X8" 8192 "$MiB")

qbd_start
check "qemu-io writes 0xab at $X (in the second chunk) and flushes" \
  qemu-io -f raw -c "write -P 0xab $X 4096" -c flush "$(uri lay)"
check "qemu-io writes 0xcd at $X8 of the 8 KiB-block volume and flushes" \
  qemu-io -f raw -c "write -P 0xcd $X8 8192" -c flush "$(uri lay8k)"
qbd_stop

check ".volumesmeta and both volumes' .meta on every backend" \
  bash -c 'for l in a b c; do for f in .volumesmeta 1/.meta 2/.meta; do
    test -s "$1/node-$l/$f" || { echo "missing node-$l/$f"; exit 1; }; done; done' _ "$T"
check "chunk file 2 on part a/b/c holds the block at 7 * 4096, its slot at 4 MiB + 7 * 32: generation, XXH3 ^ key" \
  every_part expect_block "${L1[@]}" 0xab
neighbours_unwritten() { # VOLNR OFFSET BLOCK_SIZE CHUNK_SIZE: the blocks before and after
  every_part expect_unwritten "$1" $(($2 - $3)) "$3" "$4" &&
    every_part expect_unwritten "$1" $(($2 + $3)) "$3" "$4"
}
check "the blocks either side of it are unwritten on every part (zero data and metadata)" \
  neighbours_unwritten "${L1[@]}"
check "block size 8 KiB, chunk size 1 MiB: file 3 holds the block at 5 * 8192, its slot at 1 MiB + 5 * 32 on every part" \
  every_part expect_block "${L2[@]}" 0xcd
check "block size 8 KiB: the blocks either side of it are unwritten on every part" \
  neighbours_unwritten "${L2[@]}"

chunk_files_are() { # VOLNR FILE_SIZE NAME...: each part's directory holds exactly these chunk
  # files (a chunk never written has no file), each FILE_SIZE bytes long, and nothing else
  local vol=$1 size=$2 l f got dir rc=0
  shift 2
  for l in a b c; do
    dir="$T/node-$l/$vol/$l"
    got=$(find "$dir" -mindepth 1 -printf '%f\n' | sort | xargs)
    [ "$got" = "$*" ] || { echo "node-$l/$vol/$l holds '$got', expected '$*'"; rc=1; }
    for f in "$@"; do
      got=$(stat -c %s "$dir/$f" 2>/dev/null)
      [ "$got" = "$size" ] || { echo "$dir/$f: size '$got', expected $size"; rc=1; }
    done
  done
  return $rc
}
check "volume 1 has chunk file 2 only, 4 MiB + 1024 x 32 bytes, on every part" \
  chunk_files_are 1 $((4 * MiB + 1024 * 32)) 2
check "volume 2 has chunk file 3 only, 1 MiB + 128 x 32 bytes, on every part" \
  chunk_files_are 2 $((MiB + 128 * 32)) 3
check "head -c 4M extracts the chunk's data: what the client wrote, zeros elsewhere" bash -c '
  head -c $((4 * 1048576)) "$1" >"$2/chunk.bin" && python3 -c "
import sys
d = open(sys.argv[1], \"rb\").read()
want = bytes(7 * 4096) + bytes([0xab]) * 4096 + bytes(len(d) - 8 * 4096)
sys.exit(d != want)" "$2/chunk.bin"' _ "$(chunk_path node-b 1 b 1)" "$T"
check "a chunk file of the 8 KiB-block volume is sparse: one block and the slot page allocated" \
  bash -c '[ "$(stat -c %b "$1")" -lt 64 ]' _ "$(chunk_path node-a 2 a 2)"

# Overwrite: new data, a newer generation, on every part.
Y=$((X + 2 * 4096)) # WRITE_ZEROES later
Z=$((X + 3 * 4096)) # WRITE_ZEROES with NO_HOLE later
gens=()
for l in a b c; do gens+=("$(gen_of $l "${L1[@]}")"); done
qbd_start
check "qemu-io overwrites the block with 0xef, writes 0x12 two blocks on, and flushes" \
  qemu-io -f raw -c "write -P 0xef $X 4096" -c "write -P 0x12 $Y 8192" -c flush "$(uri lay)"
qbd_stop
overwritten() {
  local i=0 l rc=0
  for l in a b c; do
    expect_block $l "${L1[@]}" 0xef $((gens[i] + 1)) || rc=1
    i=$((i + 1))
  done
  return $rc
}
check "an overwrite leaves new data, its XXH3 and a higher generation on every part" overwritten

# TRIM and WRITE_ZEROES make blocks unwritten; WRITE_ZEROES with NO_HOLE writes zeros (§4.3).
gens=()
for l in a b c; do gens+=("$(gen_of $l 1 "$Z" 4096 $((4 * MiB)))"); done
qbd_start
check "trim, write_zeroes and write_zeroes NO_HOLE read back as zeros" \
  nbdsh -u "$(uri lay)" -c "
h.trim(4096, $X)
h.zero(4096, $Y)
h.zero(4096, $Z, nbd.CMD_FLAG_NO_HOLE)
h.flush()
assert h.pread(4 * 4096, $X) == bytes(4 * 4096)"
qbd_stop
check "a trimmed block is unwritten on every part (zero data, all-zero metadata)" \
  every_part expect_unwritten 1 "$X" 4096 $((4 * MiB))
check "a block zeroed without NO_HOLE is unwritten on every part" \
  every_part expect_unwritten 1 "$Y" 4096 $((4 * MiB))
nohole() {
  local i=0 l rc=0
  for l in a b c; do
    expect_block $l 1 "$Z" 4096 $((4 * MiB)) 0 $((gens[i] + 1)) || rc=1
    i=$((i + 1))
  done
  return $rc
}
check "a block zeroed with NO_HOLE holds zeros, their XXH3 and a newer generation on every part" \
  nohole
