"""Channel targets: ``HOST[:PORT]`` or a gRPC name (``dns:``, ``unix:``, ...), checked when built.

The accepted names are those of gRPC's naming doc (grpc/grpc ``doc/naming.md``): a target gRPC
would only fail on at the first call (``localhost:abc``, after every retry) is refused here,
with a message naming the problem.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["SCHEMES", "check"]

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


class _BadTargetError(ValueError):
    pass


def check(target: object, origin: str = "") -> str:
    """``target`` as gRPC should get it: ``HOST`` gets port 443; a gRPC name is kept as is.

    Args:
        target: What the caller gave.
        origin: Where it came from, for the message (e.g. ``" from CLARIFAI_GRPC_BASE"``).

    Raises:
        ValueError: The target is not one gRPC can dial; the message says why.
    """
    if not isinstance(target, str):
        raise ValueError(f"{_RULE}; got a {type(target).__name__}{origin}")
    try:
        return _check(target)
    except _BadTargetError as exc:
        shown = repr(target) if len(target) <= 200 else repr(target[:200]) + "..."
        raise ValueError(f"{_RULE}; got {shown}{origin}: {exc}") from None


def _check(target: str) -> str:
    if not target:
        raise _BadTargetError("it is empty")
    if any(c.isspace() or not c.isprintable() for c in target):
        raise _BadTargetError("it holds whitespace or a control character")
    scheme, colon, rest = target.partition(":")
    if colon and scheme.lower() in SCHEMES:
        _NAMED[scheme.lower()](rest)
        return target
    if "://" in target:
        raise _BadTargetError(f"'{scheme}://' is not a scheme gRPC knows: give HOST[:PORT] alone")
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
        raise _BadTargetError(f"{host!r} is not a host name (letters, digits, '-', '_' and dots)")
    if colon:
        _port(port)
    return host, port


def _port(port: str) -> None:
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= _MAX_PORT:
        raise _BadTargetError(f"the port must be a number from 1 to {_MAX_PORT}, not {port!r}")


def _ipv6(address: str) -> None:
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise _BadTargetError(f"{address!r} is not an IPv6 address") from None


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
            raise _BadTargetError(f"{address!r} is not an IPv4 address") from None
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
