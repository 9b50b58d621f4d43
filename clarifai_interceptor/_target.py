"""Channel targets (``HOST[:PORT]`` or a gRPC name: ``dns:``, ``unix:``, ...), checked when built,
and the options every channel of ours gets; shared by the sync and the aio builders.

The accepted names are those of gRPC's naming doc (grpc/grpc ``doc/naming.md``): a target gRPC
would only fail on at the first call (``localhost:abc``, after every retry) is refused here,
with a message naming the problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_TARGET",
    "SCHEMES",
    "channel_options",
    "check",
    "redact",
    "resolve_target",
    "shown",
]

#: Where `secure_channel` connects when neither ``target`` nor ``CLARIFAI_GRPC_BASE`` says.
DEFAULT_TARGET = "api.clarifai.com:443"
#: Options every channel we build gets: Clarifai's message-size limits (as ``ClarifaiChannel``
#: sets them), and no gRPC retries underneath ours, so that attempts never multiply.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", 1024 * 1024 * 1024),
    ("grpc.max_receive_message_length", 1024 * 1024 * 1024),
    ("grpc.enable_retries", 0),
)

#: The gRPC name schemes accepted (grpc/grpc doc/naming.md); anything else is HOST[:PORT].
SCHEMES = ("dns", "unix", "unix-abstract", "ipv4", "ipv6")
_RULE = (
    "target must be HOST or HOST:PORT (no https:// scheme, path or whitespace), or a gRPC name: "
    "dns:[//AUTHORITY/]HOST[:PORT], unix:PATH, unix:///ABSOLUTE_PATH, unix-abstract:NAME, "
    "ipv4:ADDRESS[:PORT][,...] or ipv6:[ADDRESS]:PORT[,...]"
)
# A DNS name or IPv4 literal: letters, digits, '-', '_' and dots (a trailing dot is an FQDN).
_HOST_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_MAX_PORT = 65535
# Schemes whose text after ':' is a path or name, where '@' is no user info.
_PATH_SCHEMES = ("unix", "unix-abstract")
# A prefix kept as is when user info is redacted: ``SCHEME://``, or a gRPC scheme and ':'.
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|(?:dns|ipv4|ipv6):", re.IGNORECASE)
_SHOWN_CHARS = 200
_USERINFO = (
    "it carries user info (USER:PASSWORD@, shown as ***@), which gRPC does not authenticate "
    "with: give HOST[:PORT] alone and pass the secret as credentials"
)


class _BadTargetError(ValueError):
    pass


def check(target: object, origin: str = "") -> str:
    """``target`` as gRPC should get it: ``HOST`` gets port 443; a gRPC name is kept as is.

    Args:
        target: What the caller gave.
        origin: Where it came from, for the message (e.g. ``" from CLARIFAI_GRPC_BASE"``).

    Raises:
        ValueError: The target is not one gRPC can dial, or carries user info
            (``USER:PASSWORD@``); the message says why, and shows no user info.
    """
    if not isinstance(target, str):
        raise ValueError(f"{_RULE}; got a {type(target).__name__}{origin}")
    try:
        return _check(target)
    except _BadTargetError as exc:
        raise ValueError(f"{_RULE}; got {shown(target)}{origin}: {exc}") from None


def redact(target: str) -> str:
    """``target`` with any user info (``USER[:PASSWORD]@``) shown as ``***@``.

    Everything up to the last ``@`` goes (after a ``SCHEME://`` or gRPC scheme prefix, which
    stays); ``unix:`` and ``unix-abstract:`` names are paths, kept as they are.
    """
    scheme, colon, _ = target.partition(":")
    if "@" not in target or (colon and scheme.lower() in _PATH_SCHEMES):
        return target
    found = _PREFIX_RE.match(target)
    prefix = found.group(0) if found else ""
    return f"{prefix}***@{target[len(prefix) :].rpartition('@')[2]}"


def shown(target: str) -> str:
    """``target`` for a message: user info redacted, quoted, cut to 200 characters."""
    return _part(redact(target))


def _part(text: str) -> str:
    """A part of a target for a message: quoted, cut as `shown` cuts a target."""
    return repr(text) if len(text) <= _SHOWN_CHARS else repr(text[:_SHOWN_CHARS]) + "..."


def _check(target: str) -> str:
    if not target:
        raise _BadTargetError("it is empty")
    scheme, colon, rest = target.partition(":")
    if "@" in target and not (colon and scheme.lower() in _PATH_SCHEMES):
        raise _BadTargetError(_USERINFO)
    if any(c.isspace() or not c.isprintable() for c in target):
        raise _BadTargetError("it holds whitespace or a control character")
    if colon and scheme.lower() in SCHEMES:
        _NAMED[scheme.lower()](rest)
        return target
    if "://" in target:
        raise _BadTargetError(
            f"{_part(scheme + '://')} is not a scheme gRPC knows: give HOST[:PORT] alone"
        )
    if "/" in target:
        raise _BadTargetError("HOST[:PORT] has no path")
    _, port = _host_port(target)
    return target if port else target + ":443"


def _host_port(text: str) -> tuple[str, str]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT`` as (host, port or "")."""
    if text.startswith("["):
        address, bracket, after = text[1:].partition("]")
        if not bracket:
            raise _BadTargetError("an IPv6 address in '[' lacks its ']'")
        _ipv6(address)
        if after and not after.startswith(":"):
            raise _BadTargetError("only ':PORT' may follow ']'")
        port = after[1:]
        if after:
            _port(port)
        return address, port
    if text.count(":") > 1:
        raise _BadTargetError("an IPv6 address needs brackets, as in [::1]:443")
    host, colon, port = text.partition(":")
    if not host:
        raise _BadTargetError("the host is empty")
    if not _HOST_RE.fullmatch(host):
        raise _BadTargetError(
            f"{_part(host)} is not a host name (letters, digits, '-', '_' and dots)"
        )
    if colon:
        _port(port)
    return host, port


def _port(port: str) -> None:
    # Length first: int() of a 5,000-digit string raises its own ValueError.
    digits = port.isascii() and port.isdigit() and len(port.lstrip("0")) <= len(str(_MAX_PORT))
    if not digits or not 1 <= int(port) <= _MAX_PORT:
        raise _BadTargetError(f"the port must be a number from 1 to {_MAX_PORT}, not {_part(port)}")


def _ipv6(address: str) -> None:
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise _BadTargetError(f"{_part(address)} is not an IPv6 address") from None


def _dns(rest: str) -> None:
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if not slash:
            raise _BadTargetError(
                "dns://AUTHORITY needs '/HOST[:PORT]' after it (dns:///HOST:PORT)"
            )
        if authority:
            _host_port(authority)
    _host_port(rest)


def _unix(rest: str) -> None:
    if rest.startswith("//") and not rest.startswith("///"):
        raise _BadTargetError(
            "unix://PATH needs an absolute path: three slashes, as in unix:///tmp/s.sock"
        )
    if not rest.strip("/"):
        raise _BadTargetError("the socket path is empty")


def _unix_abstract(rest: str) -> None:
    if not rest:
        raise _BadTargetError("the abstract socket name is empty")


def _ipv4_list(rest: str) -> None:
    for entry in rest.split(","):
        address, colon, port = entry.partition(":")
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise _BadTargetError(f"{_part(address)} is not an IPv4 address") from None
        if colon:
            _port(port)


def _ipv6_list(rest: str) -> None:
    for entry in rest.split(","):
        if entry.startswith("["):
            _host_port(entry)
        else:
            _ipv6(entry)


_NAMED = {
    "dns": _dns,
    "unix": _unix,
    "unix-abstract": _unix_abstract,
    "ipv4": _ipv4_list,
    "ipv6": _ipv6_list,
}


def resolve_target(target: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``target``, else ``CLARIFAI_GRPC_BASE``, else `DEFAULT_TARGET`; port 443 if none given.

    ``HOST``, ``HOST:PORT``, ``[IPV6]:PORT``, or a gRPC name as gRPC's naming doc gives them:
    ``dns:[//AUTHORITY/]HOST[:PORT]``, ``unix:PATH``, ``unix:///ABSOLUTE_PATH``,
    ``unix-abstract:NAME``, ``ipv4:ADDRESS[:PORT][,...]``, ``ipv6:[ADDRESS]:PORT[,...]``.

    Raises:
        ValueError: The target is empty, has an ``https://`` scheme, a path, whitespace, user
            info (``USER:PASSWORD@``), or a port that is not a number from 1 to 65535; the
            message says which (and shows no user info).
    """
    env = os.environ if environ is None else environ
    if target is None:
        from_env = env.get("CLARIFAI_GRPC_BASE")
        if from_env:
            return check(from_env, " from CLARIFAI_GRPC_BASE")
        target = DEFAULT_TARGET
    return check(target)


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """`CHANNEL_OPTIONS` with the caller's ``options`` taking precedence.

    ``options`` is a sequence of ``(name, value)`` pairs (a mapping also does); None means
    none, as in gRPC.

    Raises:
        TypeError: ``options`` is a str, or not a sequence at all.
        ValueError: An entry is not a ``(name, value)`` pair with a str name.
    """
    if options is None:
        options = ()
    elif isinstance(options, Mapping):
        options = list(options.items())
    elif isinstance(options, str | bytes) or not isinstance(options, Iterable):
        raise TypeError(
            "options must be a sequence of (name, value) pairs, such as "
            f"[('grpc.enable_retries', 0)], not a {type(options).__name__}"
        )
    merged = dict(CHANNEL_OPTIONS)
    for number, entry in enumerate(options):
        if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(
                f"options entry {number} is not a (name, value) pair with a str name: {entry!r:.80}"
            )
        merged[entry[0]] = entry[1]
    return list(merged.items())
