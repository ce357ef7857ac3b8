"""Checks across steps: references, reachability, variables, and loops that never wait.

These are the mistakes a schema cannot see. Each is reported at the key that causes it.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.dialog.reader import Reader, suggest
from app.dialog.steps import CALL_VARIABLES, Handlers, MenuStep, Step
from app.dialog.yamlsource import Mark, MarkedMap


def check_plan(
    reader: Reader,
    steps_map: MarkedMap,
    steps: dict[str, Step],
    start: str | None,
    handlers: Handlers,
    handler_marks: dict[str, Mark],
    preset: Iterable[str],
) -> None:
    names = [str(n) for n in steps_map]
    before = len(reader.errors)
    _check_references(reader, steps_map, steps, names)
    for key, target in handlers.targets():
        if target not in steps_map:
            reader.error(
                handler_marks.get(key, steps_map.mark),
                f"global: {key}: unknown step {target!r}{suggest(target, names)}",
            )
    _check_variables(reader, steps_map, steps, preset)
    _check_agent_key(reader, steps_map, steps, handlers)
    if start is None or start not in steps or len(reader.errors) > before:
        return  # reachability and loops mean little while a reference is broken
    roots = [start, *(target for _, target in handlers.targets())]
    _check_reachable(reader, steps_map, steps, roots)
    _check_loops(reader, steps_map, steps)


def _mark(steps_map: MarkedMap, name: str, key: str) -> Mark:
    """Where `key` of step `name` is written (nested keys fall back to the step)."""
    body = steps_map[name]
    first = key.split(".", 1)[0].split(" ", 1)[0]
    if isinstance(body, MarkedMap) and first in body.value_marks:
        return body.value_marks[first]
    return steps_map.value_marks[name]


def _check_references(
    reader: Reader, steps_map: MarkedMap, steps: dict[str, Step], names: list[str]
) -> None:
    for name, step in steps.items():
        for key, target in step.targets():
            if target not in steps_map:
                reader.error(
                    _mark(steps_map, name, key),
                    f"step {name!r}: {key}: unknown step {target!r}{suggest(target, names)}",
                )


def _check_variables(
    reader: Reader, steps_map: MarkedMap, steps: dict[str, Step], preset: Iterable[str]
) -> None:
    variables = set(CALL_VARIABLES) | set(preset)
    for step in steps.values():
        variables.update(step.assigns())
    known = ", ".join(sorted(variables))
    for name, step in steps.items():
        used = [(key, v) for key, template in step.templates() for v in template.variables]
        for key, variable in (*used, *step.reads()):
            if variable not in variables:
                reader.error(
                    _mark(steps_map, name, key),
                    f"step {name!r}: {key}: unknown variable {variable!r}"
                    f"{suggest(variable, variables)} (known: {known})",
                )


def _check_agent_key(
    reader: Reader, steps_map: MarkedMap, steps: dict[str, Step], handlers: Handlers
) -> None:
    """A menu key that is also the global "agent" key could never be chosen."""
    if handlers.agent is None or handlers.agent.dtmf is None:
        return
    for name, step in steps.items():
        if not isinstance(step, MenuStep):
            continue
        for option in step.options:
            if option.dtmf == handlers.agent.dtmf:
                reader.error(
                    _mark(steps_map, name, "options"),
                    f"step {name!r}: options: {option.value}: key {option.dtmf!r} is the global "
                    "agent key; pick another key",
                )


def _check_reachable(
    reader: Reader, steps_map: MarkedMap, steps: dict[str, Step], roots: list[str]
) -> None:
    seen: set[str] = set()
    todo = [root for root in roots if root in steps]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(t for _, t in steps[name].targets() if t in steps and t not in seen)
    for name in steps:
        if name not in seen:
            reader.error(
                steps_map.key_marks[name],
                f"step {name!r} can never be reached: no step leads to it from 'start'",
            )


def _check_loops(reader: Reader, steps_map: MarkedMap, steps: dict[str, Step]) -> None:
    """A cycle of steps none of which waits for the caller would spin forever."""
    graph = {name: [t for _, t in step.targets() if t in steps] for name, step in steps.items()}
    for component in _cycles(graph):
        if any(steps[name].takes_input for name in component):
            continue
        ordered = sorted(component, key=lambda n: steps[n].line)
        path = " -> ".join([*ordered, ordered[0]])
        reader.error(
            steps_map.key_marks[ordered[0]],
            f"steps {path} loop without waiting for the caller (add an ask, menu or record step)",
        )


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components that contain a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(component)
    return found
