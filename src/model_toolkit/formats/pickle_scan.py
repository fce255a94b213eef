"""Walks a pickle's opcodes without running any of them: what it would call, and how big it is.

This runs before the standard library's unpickler ever sees the bytes, because that unpickler
trusts its input in ways a hostile file exploits without calling anything: a memo index of 2**27
allocates 1 GiB, a million-deep tuple crashes CPython in C (hashing and repr recurse without a
limit), shared references expand exponentially in any walker, and BUILD writes into the
`__dict__` of whatever object it is given, our module-level stand-ins included. pickletools can
list the opcodes but checks none of this, and at ~2 us an opcode is too slow for a start-up
path, so the walk is ours: a table-driven loop that tracks, per stack item, an object id, and
per object the objects it holds. After STOP the object graph gives the nesting depth, the
expanded size and any cycle, each checked against `Limits`.

Every global the pickle names is checked against the allow-list as it is met, so an unsafe
callable is named even when the rest of the file is damaged or over budget.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickletools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError, UnsafeFileError
from ..text import printable


@dataclass(frozen=True)
class Limits:
    """What one pickle may ask for. Real checkpoints use a small fraction of each (an SDXL
    checkpoint with optimizer state: ~250k opcodes, depth ~12, ~150k expanded objects)."""

    opcodes: int = 4_000_000
    depth: int = 200  # our walkers recurse: 2 Python frames a level, under Python's 1000
    memo: int = 1 << 21  # highest memo index: the C unpickler allocates an array that long
    expanded: int = 5_000_000  # objects a walk visits, each shared reference counted again


LIMITS = Limits()
ALLOWED, UNSUPPORTED, UNSAFE = "allowed", "unsupported", "unsafe"

# How each opcode's argument is laid out and what it does to the stack, from pickletools' own
# table (the format's reference), as small ints indexed by the opcode byte: the loop below runs
# ~80k times for an SD checkpoint, so it dispatches on ints and keeps everything in locals.
_FIXED, _LINE, _LINES2, _LEN1, _LEN4, _LEN4U, _LEN8U, _NONE = range(8)
_ARG_LAYOUT = {
    pickletools.UP_TO_NEWLINE: _LINE,
    pickletools.TAKEN_FROM_ARGUMENT1: _LEN1,
    pickletools.TAKEN_FROM_ARGUMENT4: _LEN4,
    pickletools.TAKEN_FROM_ARGUMENT4U: _LEN4U,
    pickletools.TAKEN_FROM_ARGUMENT8U: _LEN8U,
}
_LENGTHS = {_LEN1: (1, "<B"), _LEN4: (4, "<i"), _LEN4U: (4, "<I"), _LEN8U: (8, "<Q")}
_INT_ARGS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}

# What an opcode does, beyond its argument.
(
    _NEW,  # pops a fixed count and/or down to a mark; pushes a new object holding them
    _STRING,  # pushes a new string (kept: STACK_GLOBAL takes its names from the stack)
    _MUTATE,  # APPEND(S), SETITEM(S), ADDITEMS, BUILD: the object below gains what is popped
    _PUT,
    _MEMOIZE,
    _GET,
    _MARK,
    _POP,
    _POP_MARK,
    _DUP,
    _GLOBAL,
    _INST,
    _STACK_GLOBAL,
    _EXT,
    _STOP,
    _NOTHING,  # PROTO, FRAME
    _BUFFER,
) = range(17)
_ACTIONS = {
    "SHORT_BINUNICODE": _STRING,
    "BINUNICODE": _STRING,
    "BINUNICODE8": _STRING,
    "UNICODE": _STRING,
    "APPEND": _MUTATE,
    "APPENDS": _MUTATE,
    "SETITEM": _MUTATE,
    "SETITEMS": _MUTATE,
    "ADDITEMS": _MUTATE,
    "BUILD": _MUTATE,
    "PUT": _PUT,
    "BINPUT": _PUT,
    "LONG_BINPUT": _PUT,
    "MEMOIZE": _MEMOIZE,
    "GET": _GET,
    "BINGET": _GET,
    "LONG_BINGET": _GET,
    "MARK": _MARK,
    "POP": _POP,
    "POP_MARK": _POP_MARK,
    "DUP": _DUP,
    "GLOBAL": _GLOBAL,
    "INST": _INST,
    "STACK_GLOBAL": _STACK_GLOBAL,
    "EXT1": _EXT,
    "EXT2": _EXT,
    "EXT4": _EXT,
    "STOP": _STOP,
    "PROTO": _NOTHING,
    "FRAME": _NOTHING,
    "NEXT_BUFFER": _BUFFER,
    "READONLY_BUFFER": _BUFFER,
}


def _op_table() -> list[tuple[str, int, int, int, int, bool] | None]:
    """Per opcode byte: (name, action, argument layout, fixed argument size, fixed pops,
    pops to a mark), or None for a byte that is no opcode."""
    table: list[tuple[str, int, int, int, int, bool] | None] = [None] * 256
    for info in pickletools.opcodes:
        if info.arg is None:
            layout, size = _NONE, 0
        elif info.arg.n > 0:
            layout, size = _FIXED, info.arg.n
        elif info.arg.name == "stringnl_noescape_pair":
            layout, size = _LINES2, 0
        else:
            layout, size = _ARG_LAYOUT[info.arg.n], 0
        before = [item.name for item in info.stack_before]
        pops = len([name for name in before if name not in ("mark", "stackslice")])
        action = _ACTIONS.get(info.name, _NEW)
        table[ord(info.code)] = (info.name, action, layout, size, pops, "mark" in before)
    return table


_OPS = _op_table()


_NAME_LIMIT = 1000  # longer module or attribute names are not names a real pickle uses
_DATA_KEPT = 4 * _NAME_LIMIT  # arguments longer than this are skipped, never copied


@dataclass(frozen=True)
class PickleScan:
    end: int  # offset just past STOP: where the next part of the file begins
    depth: int  # how deep what it builds nests


def qualified_name(module: str, name: str) -> str:
    """A global's name as Python 3 spells it (protocols 0-2 use Python 2 module names)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def scan(
    buffer: Any,
    start: int,
    end: int,
    filename: str,
    allowed: Callable[[str], str],
    limits: Limits | None = None,
) -> PickleScan:
    """Walk one pickle in `buffer[start:end]` (bytes or an mmap) up to its STOP.

    `allowed(qualified_name)` says ALLOWED, UNSUPPORTED (safe, but no model file uses it) or
    UNSAFE. Raises UnsafeFileError at the first unsafe global, FormatError at an unsupported
    one, for a damaged pickle or one beyond `limits`. Nothing is imported, built or called.
    """

    limits = limits or LIMITS  # looked up now: a program may set LIMITS to raise them

    def broken(why: str) -> FormatError:
        return FormatError(f"{filename}: broken pickle ({why})")

    def over(what: str, limit: int) -> FormatError:
        return FormatError(f"{filename}: pickle {what} (limit {limit:,})")

    stack: list[int] = []
    marks: list[int] = []
    memo: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    strings: dict[int, str] = {}
    global_ids: set[int] = set()
    pos, count, objects = start, 0, 0
    max_opcodes, max_memo = limits.opcodes, limits.memo
    unpack = struct.unpack

    def global_object(qualified: str) -> int:
        nonlocal objects
        if len(qualified) > _NAME_LIMIT:
            raise broken("a global's name is too long")
        verdict = allowed(qualified)
        if verdict == UNSAFE:
            raise UnsafeFileError(f"{filename} is unsafe: it calls {printable(qualified)}")
        if verdict == UNSUPPORTED:
            raise FormatError(f"{filename} uses {qualified}, which is not supported")
        global_ids.add(objects)
        objects += 1
        return objects - 1

    def pop_to_mark() -> list[int]:
        if not marks:
            raise broken("no mark on the stack")
        mark = marks.pop()
        items = stack[mark:]
        del stack[mark:]
        return items

    while True:
        if pos >= end:
            raise broken("no STOP opcode")
        op = _OPS[buffer[pos]]
        if op is None:
            raise broken(f"unknown opcode {buffer[pos]:#04x}")
        name, action, layout, size, pops, to_mark = op
        pos += 1
        count += 1
        if count > max_opcodes:
            raise over("has too many opcodes", max_opcodes)
        # The argument: bytes (None when too long to keep), an int, or a pair of lines.
        arg: Any = None
        if layout == _FIXED:
            if pos + size > end:
                raise broken("truncated")
            if size == 1:
                arg = buffer[pos]
            else:
                form = _INT_ARGS.get(size)
                arg = unpack(form, buffer[pos : pos + size])[0] if form else None
            pos += size
        elif layout != _NONE:
            lines = 2 if layout == _LINES2 else 1 if layout == _LINE else 0
            parts = []
            for _ in range(max(lines, 1)):
                if lines:
                    stop = buffer.find(b"\n", pos, end)
                    if stop < 0:
                        raise broken("unterminated line")
                    length, skip = stop - pos, 1
                else:
                    width, form = _LENGTHS[layout]
                    if pos + width > end:
                        raise broken("truncated")
                    length, skip = unpack(form, buffer[pos : pos + width])[0], 0
                    pos += width
                if length < 0 or pos + length > end:
                    raise broken("truncated")
                parts.append(bytes(buffer[pos : pos + length]) if length <= _DATA_KEPT else None)
                pos += length + skip
            arg = parts[0] if len(parts) == 1 else parts

        if action == _NEW:
            held = pop_to_mark() if to_mark else []
            if pops:
                if len(stack) - (marks[-1] if marks else 0) < pops:
                    raise broken(f"stack underflow at {name}")
                held = stack[-pops:] + held
                del stack[-pops:]
            if held:
                children[objects] = held
            stack.append(objects)
            objects += 1
        elif action == _STRING:
            if arg is not None:
                try:
                    strings[objects] = arg.decode("latin-1" if name == "UNICODE" else "utf-8")
                except UnicodeDecodeError:
                    raise broken("bad UTF-8 in a string") from None
            stack.append(objects)
            objects += 1
        elif action in (_PUT, _MEMOIZE, _GET):
            if action == _MEMOIZE:
                arg = len(memo)
            elif isinstance(arg, bytes) or arg is None:
                try:
                    arg = int(arg)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise broken("bad memo index") from None
            if not 0 <= arg <= max_memo:
                raise over(f"uses memo index {arg}", max_memo)
            if action == _GET:
                if arg not in memo:
                    raise broken(f"memo index {arg} was never stored")
                stack.append(memo[arg])
            elif not stack:
                raise broken("memo put on an empty stack")
            else:
                memo[arg] = stack[-1]
        elif action == _MARK:
            marks.append(len(stack))
        elif action == _MUTATE:
            held = pop_to_mark() if to_mark else []
            if pops > 1:
                held = stack[-(pops - 1) :] + held
                del stack[-(pops - 1) :]
            if not stack or (marks and len(stack) <= marks[-1]):
                raise broken(f"{name} without a target")
            target = stack[-1]
            if name == "BUILD" and target in global_ids:
                raise FormatError(f"{filename}: pickle sets the state of a class or function")
            children.setdefault(target, []).extend(held)
        elif action in (_GLOBAL, _INST):
            if None in arg:
                raise broken("a global's name is too long")
            module, attribute = (part.decode("latin-1") for part in arg)
            ident = global_object(qualified_name(module, attribute))
            if action == _INST:
                children[objects] = [ident, *pop_to_mark()]
                ident = objects
                objects += 1
            stack.append(ident)
        elif action == _STACK_GLOBAL:
            if len(stack) - (marks[-1] if marks else 0) < 2:
                raise broken("stack underflow at STACK_GLOBAL")
            attribute, module = stack.pop(), stack.pop()
            if module not in strings or attribute not in strings:
                raise broken("STACK_GLOBAL without a module and a name")
            stack.append(global_object(qualified_name(strings[module], strings[attribute])))
        elif action == _EXT:
            known = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
            stack.append(
                global_object(qualified_name(*known) if known else f"copyreg extension {arg}")
            )
        elif action == _POP:
            if marks and len(stack) == marks[-1]:
                marks.pop()
            elif stack:
                stack.pop()
            else:
                raise broken("stack underflow at POP")
        elif action == _POP_MARK:
            pop_to_mark()
        elif action == _DUP:
            if not stack or (marks and len(stack) <= marks[-1]):
                raise broken("stack underflow at DUP")
            stack.append(stack[-1])
        elif action == _STOP:
            if not stack or (marks and len(stack) <= marks[-1]):
                raise broken("stack underflow at STOP")
            root = stack.pop()
            break
        elif action == _BUFFER:
            raise FormatError(f"{filename}: pickle uses out-of-band buffers (unsupported)")
    depth = _check_graph(root, children, filename, limits, over)
    return PickleScan(pos, depth)


def _check_graph(
    root: int,
    children: dict[int, list[int]],
    filename: str,
    limits: Limits,
    over: Callable[[str, int], FormatError],
) -> int:
    """Depth and expanded size of what `root` holds, refusing cycles; iterative, bounded."""
    # Objects that hold nothing (most of them: numbers, strings, globals) have no entry in
    # `children`; they count as depth 1, size 1 without being visited.
    depth: dict[int, int] = {}
    size: dict[int, int] = {}
    on_path: set[int] = set()
    cap = limits.expanded + 1
    if root not in children:
        return 1
    todo: list[tuple[int, bool]] = [(root, False)]
    while todo:
        node, done = todo.pop()
        held = children[node]
        if done:
            deepest, total = 0, 1
            for child in held:
                if child in children:
                    deepest = max(deepest, depth[child])
                    total += size[child]
                else:
                    deepest = max(deepest, 1)
                    total += 1
            depth[node] = deepest + 1
            size[node] = min(cap, total)
            on_path.discard(node)
            if deepest >= limits.depth:
                raise over(f"nests deeper than {limits.depth} levels", limits.depth)
            continue
        if node in depth:
            continue
        on_path.add(node)
        todo.append((node, True))
        for child in held:
            if child in children and child not in depth:
                if child in on_path:
                    raise FormatError(f"{filename}: pickle refers to itself (a cycle)")
                todo.append((child, False))
    if size[root] > limits.expanded:
        raise over("expands to too many objects (shared references)", limits.expanded)
    return depth[root]
