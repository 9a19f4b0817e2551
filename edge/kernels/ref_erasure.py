"""Pure-Python reference of the Reed-Solomon code in native/: the same field, the same generator, the same API.

Used by the tests as the independent answer and by the agent when the native build is missing. Multiplication
by a constant is bytes.translate with a 256-byte product table and addition is XOR of big integers, so the
reference handles tens of MiB in seconds without any compiled code of our own.
"""

from collections import OrderedDict

POLY = 0x11D
MAX_SHARDS = 256
DECODE_CACHE_SIZE = 64

_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= POLY
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]
del _x, _i


def gf_mul(a: int, b: int) -> int:
    """a * b in GF(2^8) with the polynomial 0x11d."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    """The multiplicative inverse of a non-zero element."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


def check_km(k: int, m: int) -> None:
    """Raise ValueError unless 1 <= k, 1 <= m and k + m <= 256."""
    if k < 1:
        raise ValueError(f"k (data shards) must be at least 1, got {k}")
    if m < 1:
        raise ValueError(f"m (parity shards) must be at least 1, got {m}")
    if k + m > MAX_SHARDS:
        raise ValueError(f"k + m must be at most {MAX_SHARDS} over GF(2^8), got {k} + {m} = {k + m}")


def generator_matrix(k: int, m: int) -> list[bytes]:
    """Identity rows, then Cauchy rows 1 / (i ^ j) for i = k..k+m-1, j = 0..k-1."""
    check_km(k, m)
    rows = [bytes(1 if j == i else 0 for j in range(k)) for i in range(k)]
    rows += [bytes(gf_inv(i ^ j) for j in range(k)) for i in range(k, k + m)]
    return rows


def invert_matrix(rows: list[bytes]) -> list[bytes]:
    """Gauss-Jordan inverse of a square matrix over GF(2^8); ValueError when singular."""
    n = len(rows)
    a = [list(r) for r in rows]
    inv = [[1 if i == j else 0 for j in range(n)] for i in range(n)]
    for col in range(n):
        piv = next((r for r in range(col, n) if a[r][col]), None)
        if piv is None:
            raise ValueError("matrix is singular")
        a[col], a[piv] = a[piv], a[col]
        inv[col], inv[piv] = inv[piv], inv[col]
        s = gf_inv(a[col][col])
        a[col] = [gf_mul(v, s) for v in a[col]]
        inv[col] = [gf_mul(v, s) for v in inv[col]]
        for r in range(n):
            f = a[r][col]
            if r != col and f:
                a[r] = [x ^ gf_mul(f, y) for x, y in zip(a[r], a[col])]
                inv[r] = [x ^ gf_mul(f, y) for x, y in zip(inv[r], inv[col])]
    return [bytes(r) for r in inv]


def affine_matrix(c: int) -> int:
    """The GF2P8AFFINEQB bit matrix for multiplication by c: byte 7 - i is the row giving result bit i."""
    mat = 0
    for i in range(8):
        row = sum(((gf_mul(c, 1 << j) >> i) & 1) << j for j in range(8))
        mat |= row << (8 * (7 - i))
    return mat


_PRODUCT_TABLES = [bytes(gf_mul(c, x) for x in range(256)) for c in range(256)]


def _dot(coefs: bytes, shards: list, length: int) -> bytes:
    acc = 0
    for c, shard in zip(coefs, shards):
        if c:
            acc ^= int.from_bytes(bytes(shard).translate(_PRODUCT_TABLES[c]), "little")
    return acc.to_bytes(length, "little")


def _lengths(shards, what: str) -> int:
    length = None
    for i, s in enumerate(shards):
        try:
            n = memoryview(s).nbytes
        except TypeError:
            raise TypeError(f"{what} {i} is a {type(s).__name__}, not a bytes-like buffer") from None
        if length is None:
            length = n
        elif n != length:
            raise ValueError(f"shards must all have the same length: {what} {i} has {n} bytes, expected {length}")
    return length or 0


def _write(out, i: int, value: bytes, what: str) -> None:
    view = memoryview(out)
    if view.readonly:
        raise ValueError(f"{what} {i} is read-only; pass a bytearray or a writable memoryview")
    view.cast("B")[:] = value


class Encoder:
    """Encoder(k, m).encode(data, parity): fill m parity shards from k data shards."""

    path = "reference"

    def __init__(self, k: int, m: int, path=None):
        check_km(k, m)
        self.k, self.m = k, m
        self._parity_rows = generator_matrix(k, m)[k:]

    def encode(self, data, parity) -> None:
        """Compute parity[0..m) from data[0..k); all equal-length buffers, parity writable."""
        if len(data) != self.k:
            raise ValueError(f"encode needs exactly k={self.k} data shards, got {len(data)}")
        if len(parity) != self.m:
            raise ValueError(f"encode needs exactly m={self.m} parity buffers, got {len(parity)}")
        n = _lengths(data, "data shard")
        if _lengths(parity, "parity buffer") != n:
            raise ValueError("parity buffers and data shards must have the same length")
        for i, (row, out) in enumerate(zip(self._parity_rows, parity)):
            _write(out, i, _dot(row, data, n), "parity buffer")


class Decoder:
    """Decoder(k, m).decode(shards, ids, out, out_ids): rebuild any shards from any k others."""

    path = "reference"

    def __init__(self, k: int, m: int, path=None):
        check_km(k, m)
        self.k, self.m = k, m
        self._generator = generator_matrix(k, m)
        self._cache: OrderedDict = OrderedDict()

    def decode(self, shards, ids, out, out_ids) -> None:
        """Rebuild shards out_ids into out from the first k of shards (numbered by ids)."""
        n = self.k + self.m
        if len(shards) != len(ids):
            raise ValueError(f"got {len(shards)} shards but {len(ids)} shard numbers")
        if len(shards) < self.k:
            raise ValueError(f"decode needs at least k={self.k} shards, got {len(shards)}: "
                             f"more than m={self.m} shards are lost and the data cannot be rebuilt")
        if len(out) != len(out_ids):
            raise ValueError(f"got {len(out)} output buffers but {len(out_ids)} shard numbers to rebuild")
        present = tuple(int(i) for i in ids[: self.k])
        wanted = tuple(int(i) for i in out_ids)
        for name, nums in (("shard", present), ("output shard", wanted)):
            for i in nums:
                if not 0 <= i < n:
                    raise ValueError(f"{name} number {i} is outside 0..{n - 1} for k={self.k}, m={self.m}")
            if len(set(nums)) != len(nums):
                raise ValueError(f"{name} numbers repeat: {list(nums)}")
        if not wanted:
            return
        length = _lengths(shards[: self.k], "shard")
        if _lengths(out, "output buffer") != length:
            raise ValueError("output buffers and shards must have the same length")
        rows = self._rows(present, wanted)
        for i, (row, buf) in enumerate(zip(rows, out)):
            _write(buf, i, _dot(row, shards[: self.k], length), "output buffer")

    def _rows(self, present: tuple, wanted: tuple) -> list[bytes]:
        key = (present, wanted)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        inv = invert_matrix([self._generator[i] for i in present])
        rows = []
        for w in wanted:
            g = self._generator[w]
            rows.append(bytes(_xor_all(gf_mul(g[i], inv[i][j]) for i in range(self.k)) for j in range(self.k)))
        self._cache[key] = rows
        if len(self._cache) > DECODE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return rows


def _xor_all(values) -> int:
    acc = 0
    for v in values:
        acc ^= v
    return acc
