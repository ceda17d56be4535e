"""Protobuf descriptors of the services a server exposes, kept with their source comments.

The descriptors compiled into ``*_pb2`` modules lose the .proto comments, and so does
``FileDescriptor.CopyToProto``. A FileDescriptorSet built with ``--include_source_info`` keeps
them, so reflection serves the file protos exactly as they were in the set: ``grpcurl describe``
then shows the API documentation.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError

BUILTIN_SET = "descriptor_set.binpb"


class DescriptorSetError(Exception):
    """A FileDescriptorSet could not be read or does not fit with the others."""


class DescriptorCatalog:
    """A descriptor pool plus the original ``FileDescriptorProto`` of every file in it."""

    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add_set(self, data: bytes, origin: str) -> None:
        """Add every file of a serialized FileDescriptorSet; files already present are skipped.

        Raises:
            DescriptorSetError: the bytes are not a FileDescriptorSet, or a file's imports are missing.
        """
        try:
            file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
        except DecodeError as error:
            raise DescriptorSetError(f"{origin} is not a serialized FileDescriptorSet") from error
        if not file_set.file:
            raise DescriptorSetError(f"{origin} holds no file descriptors")
        for file_proto in file_set.file:
            if file_proto.name in self._files:
                continue
            try:
                self.pool.Add(file_proto)
            except (TypeError, KeyError, ValueError) as error:
                raise DescriptorSetError(
                    f"{origin}: cannot load {file_proto.name} ({error}); build the set with "
                    "protoc --include_imports so that it holds every imported file"
                ) from error
            self._files[file_proto.name] = file_proto

    def add_compiled(self, file: descriptor.FileDescriptor) -> None:
        """Add a file compiled into a ``*_pb2`` module, and its imports (without source comments)."""
        for dependency in file.dependencies:
            self.add_compiled(dependency)
        if file.name not in self._files:
            file_proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(file_proto)
            self.pool.Add(file_proto)
            self._files[file.name] = file_proto

    def find_service(self, full_name: str) -> descriptor.ServiceDescriptor | None:
        try:
            return self.pool.FindServiceByName(full_name)
        except KeyError:
            return None

    def file_protos(self, file: descriptor.FileDescriptor) -> list[bytes]:
        """``file`` and everything it imports, serialized, as a reflection reply carries them."""
        seen: dict[str, descriptor.FileDescriptor] = {}
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name not in seen:
                seen[current.name] = current
                pending.extend(current.dependencies)
        return [self._original(d).SerializeToString() for d in seen.values()]

    def _original(self, file: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
        original = self._files.get(file.name)
        if original is None:
            original = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(original)
        return original


def builtin_catalog(extra_sets: Iterable[tuple[bytes, str]] = ()) -> DescriptorCatalog:
    """The catalogue of this project's own services (built by ``make proto``), plus ``extra_sets``."""
    catalog = DescriptorCatalog()
    catalog.add_set(resources.files("shop").joinpath(BUILTIN_SET).read_bytes(), f"shop/{BUILTIN_SET}")
    for data, origin in extra_sets:
        catalog.add_set(data, origin)
    return catalog
