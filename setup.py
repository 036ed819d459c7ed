"""Build of pyacrn's one native part: the `acrn exec` preload library (C, no Python inside).

It is built as an optional extension so that pyacrn still installs where no C compiler is;
`acrn exec` then says why it cannot run (acrn.service.client.preload_library).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "acrn.service._preload",
            sources=["src/acrn/service/preload.c"],
            depends=["src/acrn/service/protocol.h"],
            extra_compile_args=["-fvisibility=hidden", "-O2", "-Wall"],
            extra_link_args=["-ldl", "-lpthread"],
            optional=True,
        )
    ]
)
