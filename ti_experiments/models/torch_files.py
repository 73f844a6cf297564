"""Read a `torch.save` file (a `.pt`/`.bin` embedding someone sent) as data: nothing in it is unpickled.

`torch.save` writes a zip: `data.pkl`, a pickle that rebuilds the object, and one raw buffer a tensor
(`data/0`, `data/1`, ...). Unpickling runs whatever callables the pickle names; `weights_only=True`
narrows them to torch's own list, which is still code chosen by the file's author. Here the pickle's
opcodes are decoded with `pickletools.genops` (a disassembler: it calls nothing) and interpreted by a
small stack machine that knows only what an embedding file holds: dicts, lists, tuples, strings,
numbers, booleans, None, `OrderedDict`, and tensors and parameters over raw buffers. Any other opcode or
name refuses the file before anything in it is built.
"""

from __future__ import annotations

import io
import math
import pickletools
import zipfile
from pathlib import Path

import torch

# what an embedding file's pickle may name, and the dtype of each storage class
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
REBUILDS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
            ("collections", "OrderedDict")}
# the pickle itself (not the tensors) of an embedding file is a few hundred bytes
MAX_PICKLE_BYTES = 1 << 20
# every buffer an embedding names together: a few rows of at most 1280 floats; 64 MiB leaves room and stops
# a whole model checkpoint passed by mistake before it is read into memory
MAX_TENSOR_BYTES = 64 << 20

_STRINGS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
            "SHORT_BINSTRING"}
_NUMBERS = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_SKIPPED = {"PROTO", "FRAME"}
# every other opcode an embedding file uses, and the _Machine method that interprets it
_HANDLERS = {
    "EMPTY_DICT": "empty", "EMPTY_LIST": "empty", "EMPTY_TUPLE": "empty", "MARK": "mark",
    "TUPLE": "collect", "LIST": "collect", "DICT": "collect",
    "TUPLE1": "small_tuple", "TUPLE2": "small_tuple", "TUPLE3": "small_tuple",
    "SETITEM": "set_items", "SETITEMS": "set_items", "APPEND": "append", "APPENDS": "append",
    "BINPUT": "put", "LONG_BINPUT": "put", "PUT": "put", "MEMOIZE": "put",
    "BINGET": "get", "LONG_BINGET": "get", "GET": "get",
    "GLOBAL": "global_name", "STACK_GLOBAL": "global_name", "BINPERSID": "persistent", "REDUCE": "reduce",
}


class NotData(ValueError):
    """The file holds something besides plain containers and tensors (or is not a torch zip)."""


class _Mark:
    pass


class _Name(tuple):
    """A (module, name) the pickle refers to: never imported, only compared with REBUILDS."""


def read_torch_file(path: Path) -> object:
    """The object a `torch.save` zip holds, when it is made only of plain containers and tensors."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise NotData("not a torch.save zip (an old or another pickle format)") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise NotData("no data.pkl in the archive")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() != b"little":
            raise NotData("written on a big-endian machine")
        if archive.getinfo(pickles[0]).file_size > MAX_PICKLE_BYTES:
            raise NotData(f"its pickle is over {MAX_PICKLE_BYTES} bytes (not an embedding)")
        return _Machine(archive, prefix).run(archive.read(pickles[0]))


class _Machine:
    """The part of the pickle virtual machine an embedding file uses, building only data."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        self.archive, self.prefix = archive, prefix
        self.stack: list = []
        self.memo: dict = {}
        self.tensor_bytes = 0

    def run(self, data: bytes) -> object:
        try:
            for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
                if opcode.name == "STOP":
                    return self.stack.pop()
                self.step(opcode.name, arg)
        except (IndexError, TypeError, ValueError) as exc:  # an empty stack, a wrong type, an unreadable opcode
            if isinstance(exc, NotData):
                raise
            raise NotData(f"its pickle is malformed ({type(exc).__name__})") from None
        raise NotData("the pickle does not end")

    def step(self, name: str, arg) -> None:
        """One opcode: a plain value is pushed; the rest go to the handler `_HANDLERS` names."""
        if name in _SKIPPED:
            return
        if name in _STRINGS or name in _NUMBERS:
            self.stack.append(arg)
        elif name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name])
        elif name in _HANDLERS:
            getattr(self, _HANDLERS[name])(name, arg)
        else:
            raise NotData(f"it holds a pickle operation ({name}) that builds more than tensors and containers")

    def empty(self, name: str, _arg) -> None:
        self.stack.append({"EMPTY_DICT": {}, "EMPTY_LIST": [], "EMPTY_TUPLE": ()}[name])

    def mark(self, _name: str, _arg) -> None:
        self.stack.append(_Mark)

    def collect(self, name: str, _arg) -> None:
        """TUPLE / LIST / DICT: the items since the last mark."""
        items = self.since_mark()
        self.stack.append(tuple(items) if name == "TUPLE" else list(items) if name == "LIST"
                          else self.pairs({}, items))

    def small_tuple(self, name: str, _arg) -> None:
        count = int(name[-1])
        items = self.stack[-count:]
        del self.stack[-count:]
        self.stack.append(tuple(items))

    def set_items(self, name: str, _arg) -> None:
        if name == "SETITEM":
            value, key = self.stack.pop(), self.stack.pop()
            self.pairs(self.stack[-1], [key, value])
        else:
            items = self.since_mark()  # first: the dict is the item below the mark
            self.pairs(self.stack[-1], items)

    def append(self, name: str, _arg) -> None:
        self.extend([self.stack.pop()] if name == "APPEND" else self.since_mark())

    def put(self, name: str, arg) -> None:
        self.memo[len(self.memo) if name == "MEMOIZE" else arg] = self.stack[-1]

    def get(self, _name: str, arg) -> None:
        if arg not in self.memo:
            raise NotData("the pickle refers to a value it never stored")
        self.stack.append(self.memo[arg])

    def global_name(self, name: str, arg) -> None:
        if name == "GLOBAL":
            module, _, attr = arg.partition(" ")
        else:
            attr, module = self.stack.pop(), self.stack.pop()
        self.stack.append(_Name((module, attr)))

    def persistent(self, _name: str, _arg) -> None:
        self.stack.append(self.storage(self.stack.pop()))

    def reduce(self, _name: str, _arg) -> None:
        args, func = self.stack.pop(), self.stack.pop()
        self.stack.append(self.rebuild(func, args))

    def since_mark(self) -> list:
        stack = self.stack
        marks = [i for i, item in enumerate(stack) if item is _Mark]  # identity: `in` would compare tensors
        if not marks:
            raise NotData("the pickle is malformed (no mark)")
        at = marks[-1]
        items = stack[at + 1:]
        del stack[at:]
        return items

    @staticmethod
    def pairs(target, items: list) -> dict:
        if not isinstance(target, dict) or len(items) % 2:
            raise NotData("the pickle sets items on something that is not a dict")
        for key, value in zip(items[::2], items[1::2]):
            if not isinstance(key, (str, int, float, bool, type(None), tuple)):
                raise NotData("the pickle uses a key that is not a plain value")
            target[key] = value
        return target

    def extend(self, items: list) -> None:
        if not isinstance(self.stack[-1], list):
            raise NotData("the pickle appends to something that is not a list")
        self.stack[-1].extend(items)

    def storage(self, pid) -> torch.Tensor:
        """A tensor's raw buffer, as a flat tensor of its storage class's dtype."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Name)
                and pid[1][0] == "torch" and pid[1][1] in STORAGE_DTYPES and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise NotData("it refers to an object outside the pickle that is not a tensor buffer")
        dtype = STORAGE_DTYPES[pid[1][1]]
        entry = f"{self.prefix}data/{pid[2]}"
        try:
            info = self.archive.getinfo(entry)
        except KeyError:
            raise NotData(f"its tensor buffer {pid[2]!r} is missing") from None
        size = pid[4] * torch.empty((), dtype=dtype).element_size()
        self.tensor_bytes += info.file_size
        if info.file_size != size or self.tensor_bytes > MAX_TENSOR_BYTES:
            raise NotData("a tensor buffer has the wrong size" if info.file_size != size
                          else f"its tensors are over {MAX_TENSOR_BYTES >> 20} MiB (a model, not an embedding)")
        raw = bytearray(self.archive.read(entry))
        return torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)

    def rebuild(self, func, args) -> object:
        if not isinstance(func, _Name) or tuple(func) not in REBUILDS or not isinstance(args, tuple):
            shown = ".".join(func) if isinstance(func, _Name) else type(func).__name__
            raise NotData(f"it names {shown}, which builds more than tensors and containers")
        if func[1] == "OrderedDict":
            pairs = args[0] if args else []
            if not isinstance(pairs, (list, tuple)) or any(not isinstance(p, (list, tuple)) or len(p) != 2
                                                           for p in pairs):
                raise NotData("an OrderedDict built from something that is not (key, value) pairs")
            return self.pairs({}, [x for pair in pairs for x in pair])
        if func[1] == "_rebuild_parameter":
            if not args or not isinstance(args[0], torch.Tensor):
                raise NotData("a parameter without a tensor")
            return args[0]
        return self.tensor(args)

    @staticmethod
    def tensor(args: tuple) -> torch.Tensor:
        """torch's _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]),
        checked to lie inside its buffer."""
        if len(args) < 4 or not isinstance(args[0], torch.Tensor):
            raise NotData("a tensor without a buffer")
        buffer, offset, size, stride = args[:4]
        plain = all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) \
            if isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) else False
        if not plain:
            raise NotData("a tensor with a malformed shape")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
        if last >= buffer.numel() or math.prod(size) * buffer.element_size() > MAX_TENSOR_BYTES:
            raise NotData("a tensor reaches past its buffer, or repeats it into more than an embedding holds")
        return torch.as_strided(buffer, size, stride, offset).clone()
