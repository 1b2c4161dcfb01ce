"""Every RPC method the gateway serves, by name: protocol's params of each method (the
one table of names, protocol.rpc_catalog) bound to the handler its group registered.

Binding checks the two sides against each other when this module is imported, so a
method protocol declares without a handler, a handler for a method it does not
declare, or a handler written for other params or returning another result than
protocol declares (the `.d.ts` promises clients that type) stops the gateway from
starting.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from gateway.rpc import analytics, batch, entities, projects, sessions, trash, versions
from gateway.rpc.call import Handler, Handlers, Method, Methods, Registered
from protocol.rpc_catalog import RPC_PARAMS, RPC_RESULTS

Catalog = Mapping[str, type[BaseModel]]
Results = Mapping[str, Any]


class MethodTableError(Exception):
    """Protocol's methods and the gateway's handlers do not match."""


def bind(
    catalog: Catalog, groups: Iterable[Handlers], results: Results | None = None
) -> dict[str, Method[Any]]:
    """Each method of `catalog` with its params and the one handler registered for it
    (whose result, when `results` are given, must be the declared one)."""
    registered, problems = _merged(groups)
    problems += _mismatches(catalog, registered)
    if results is not None:
        problems += _misreturning(results, registered)
    if problems:
        raise MethodTableError("rpc methods do not match protocol: " + "; ".join(problems))
    return {
        name: Method(params, registered[name].handler, registered[name].writes)
        for name, params in catalog.items()
    }


def _merged(groups: Iterable[Handlers]) -> tuple[dict[str, Registered], list[str]]:
    """All groups' handlers by name, and a problem for each name two groups register."""
    merged: dict[str, Registered] = {}
    twice: list[str] = []
    for group in groups:
        for name, registered in group.registered.items():
            if name in merged:
                twice.append(f"{name}: handlers in two groups")
            merged[name] = registered
    return merged, twice


def _mismatches(catalog: Catalog, registered: Mapping[str, Registered]) -> list[str]:
    missing = [f"{name}: no handler" for name in catalog if name not in registered]
    unknown = [
        f"{name}: a handler, but no params in protocol (PARAMS of protocol/rpc_<group>.py)"
        for name in registered
        if name not in catalog
    ]
    mistyped = [
        problem
        for name, params in catalog.items()
        if name in registered and (problem := _mistyped(name, params, registered[name].handler))
    ]
    return missing + unknown + mistyped


def _mistyped(name: str, params: type[BaseModel], handler: Handler[Any]) -> str | None:
    """Why `handler` cannot take `params`, judged by the annotation of its last parameter
    (what `Method(params, handler)` let mypy check when both were written together)."""
    last = list(inspect.signature(handler, eval_str=True).parameters.values())[-1]
    takes = _generic_origin(last.annotation)
    if isinstance(takes, type) and issubclass(params, takes):
        return None
    named = getattr(takes, "__name__", repr(takes))
    return f"{name}: its handler takes {named}, protocol's params are {params.__name__}"


def _misreturning(results: Results, registered: Mapping[str, Registered]) -> list[str]:
    """Handlers whose return annotation is not protocol's result type for their method
    (a generic handler annotated with a base class may return the declared subclass)."""
    problems = []
    for name, entry in registered.items():
        if name not in results:
            problems.append(
                f"{name}: no result type in protocol (RESULTS of protocol/rpc_<group>.py)"
            )
            continue
        declared = results[name]
        returns = inspect.signature(entry.handler, eval_str=True).return_annotation
        if returns == declared or (
            isinstance(returns, type)
            and isinstance(declared, type)
            and issubclass(declared, returns)
        ):
            continue
        named = getattr(returns, "__name__", repr(returns))
        problems.append(f"{name}: its handler returns {named}, protocol's result is {declared!r}")
    return problems


def _generic_origin(annotation: Any) -> Any:
    """`Update` for `Update[Any, Any]`: a parametrized pydantic model is a class of its
    own, which the concrete params (subclasses of `Update[SetT, PatchT]`) do not extend."""
    metadata = getattr(annotation, "__pydantic_generic_metadata__", None)
    return (metadata and metadata["origin"]) or annotation


METHODS: Methods = bind(
    RPC_PARAMS,
    (
        projects.handles,
        entities.handles,
        analytics.handles,
        batch.handles,
        versions.handles,
        sessions.handles,
        trash.handles,
    ),
    RPC_RESULTS,
)
