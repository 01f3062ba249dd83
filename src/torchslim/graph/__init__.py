"""Tracing and grouping: which tensor dimensions of a model must lose the same channels."""

from torchslim.graph._graph import DependencyGraph, Group, Member, trace

__all__ = ["DependencyGraph", "Group", "Member", "trace"]
