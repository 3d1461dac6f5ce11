# SPDX-License-Identifier: Apache-2.0
#
# Conan 2 recipe for bsalloc.
#
#   conan create . --build=missing -s compiler.cppstd=20
#   conan create . --build=missing -s compiler.cppstd=20 -o "bsalloc/*:shared=True"
#
# Package id: the settings (os, arch, compiler with its cppstd, build_type), every option below
# and the requirements (Conan's default modes): shared/static, fPIC and checked mode each get
# their own binary. `checked` sets BSALLOC_CHECKED, the default of slab_resource_options::checked
# and of the object pools' checks, which consumers see as BSALLOC_CHECKED_DEFAULT. Stats are
# always collected (no build option changes them). scripts/check-recipe.py checks that all of
# this agrees with what CMakeLists.txt builds.
import os
import re

from conan import ConanFile
from conan.errors import ConanInvalidConfiguration
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load, rmdir
from conan.tools.scm import Version

required_conan_version = ">=2.0"


class BsallocConan(ConanFile):
    name = "bsalloc"
    description = ("C++20 std::pmr allocator framework: buddy pages, per-core slabs, "
                   "typed pools")
    license = "Apache-2.0"
    # PLACEHOLDER: bsalloc has no public address yet. When it has one, put it here and in
    # project(HOMEPAGE_URL) in CMakeLists.txt (bsalloc.pc's URL follows); scripts/check-recipe.py
    # keeps the three equal.
    homepage = "https://github.com/bsalloc/bsalloc"
    url = "https://github.com/bsalloc/bsalloc"
    topics = ("allocator", "pmr", "memory-resource", "slab", "buddy", "memory-pool")
    package_type = "library"
    settings = "os", "arch", "compiler", "build_type"
    options = {
        "shared": [True, False],
        "fPIC": [True, False],
        "checked": [True, False],
    }
    default_options = {
        "shared": False,
        "fPIC": True,
        "checked": False,
    }
    exports_sources = ("CMakeLists.txt", "cmake/*", "include/*", "src/*", "malloc/*", "LICENSE")

    # C++20 in the public headers (concepts, <span>, <bit>); the oldest compilers CI builds with.
    _min_cppstd = 20
    _compilers_minimum_version = {"gcc": "12", "clang": "14"}

    def set_version(self):
        text = load(self, os.path.join(self.recipe_folder, "CMakeLists.txt"))
        self.version = re.search(r"project\(bsalloc\s+VERSION\s+([0-9.]+)", text).group(1)

    def config_options(self):
        if self.settings.os == "Windows":
            del self.options.fPIC

    def configure(self):
        if self.options.shared:
            # A shared library is always position-independent; the option would only split ids.
            self.options.rm_safe("fPIC")

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        # fmt: <bsalloc/stats.hpp> includes it and the library calls it, so consumers need its
        # headers and library.
        self.requires("fmt/[>=9 <12]", transitive_headers=True, transitive_libs=True)
        # Boost: the sources use header-only Boost.Lockfree, and the optional component
        # boost_pmr (<bsalloc/boost_pmr.hpp>, header-only) includes Boost.Container, whose
        # library its users link. Visible for that component; bsalloc::bsalloc itself requires
        # only fmt (package_info), so it neither includes nor links Boost. Boost's own options
        # (header_only, ...) are left to the consumer's graph.
        self.requires("boost/[>=1.74 <2]", transitive_headers=True, transitive_libs=True)

    def validate(self):
        # sched_getcpu(), mmap/madvise and the thread-local caches' TLS models are Linux's.
        if self.settings.os != "Linux":
            raise ConanInvalidConfiguration(f"{self.ref} supports Linux only")
        check_min_cppstd(self, self._min_cppstd)
        minimum = self._compilers_minimum_version.get(str(self.settings.compiler))
        if minimum is None:
            raise ConanInvalidConfiguration(
                f"{self.ref} is built and tested with gcc >= 12 and clang >= 14, "
                f"not {self.settings.compiler}")
        if Version(self.settings.compiler.version) < minimum:
            raise ConanInvalidConfiguration(
                f"{self.ref} needs {self.settings.compiler} >= {minimum} (C++20)")

    def generate(self):
        tc = CMakeToolchain(self)
        # shared -> BUILD_SHARED_LIBS and fPIC -> CMAKE_POSITION_INDEPENDENT_CODE are set by
        # CMakeToolchain itself; CMakeLists.txt honours both (and the profile's cppstd).
        tc.cache_variables["BSALLOC_CHECKED"] = bool(self.options.checked)
        # Fixed: development switches that must not vary between binaries of one package id.
        tc.cache_variables["BSALLOC_BUILD_TESTS"] = False
        tc.cache_variables["BSALLOC_BUILD_EXAMPLES"] = False
        tc.cache_variables["BSALLOC_BUILD_PERF"] = False
        tc.cache_variables["BSALLOC_WERROR"] = False
        tc.cache_variables["BSALLOC_SANITIZE"] = ""
        # The TLS model follows `shared` (global-dynamic for a shared library, else initial-exec).
        tc.cache_variables["BSALLOC_TLS_MODEL"] = ""
        tc.cache_variables["BSALLOC_INSTALL"] = True
        # libbsalloc_malloc.so (LD_PRELOAD) and bsalloc::malloc_override are always packaged.
        tc.cache_variables["BSALLOC_MALLOC"] = True
        tc.generate()
        deps = CMakeDeps(self)
        # CMakeLists.txt asks for find_package(fmt 9); fmt's own package accepts any newer
        # version, Conan's generated one only the same major unless told.
        deps.set_property("fmt", "cmake_config_version_compat", "AnyNewerVersion")
        deps.generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        copy(self, "LICENSE", src=self.source_folder,
             dst=os.path.join(self.package_folder, "licenses"))
        cmake = CMake(self)
        cmake.install()
        # Consumers get CMake and pkg-config files from Conan's generators (package_info);
        # the licence is in licenses/.
        rmdir(self, os.path.join(self.package_folder, "lib", "cmake"))
        rmdir(self, os.path.join(self.package_folder, "lib", "pkgconfig"))
        rmdir(self, os.path.join(self.package_folder, "share"))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "bsalloc")
        self.cpp_info.set_property("pkg_config_name", "bsalloc")
        # 0.x: like the installed bsallocConfigVersion.cmake, 0.1 accepts 0.1.* only.
        self.cpp_info.set_property("cmake_config_version_compat", "SameMinorVersion")

        core = self.cpp_info.components["bsalloc"]
        core.set_property("cmake_target_name", "bsalloc::bsalloc")
        core.set_property("pkg_config_name", "bsalloc")
        core.libs = ["bsalloc"]
        core.defines = [f"BSALLOC_CHECKED_DEFAULT={1 if self.options.checked else 0}"]
        core.requires = ["fmt::fmt"]
        core.system_libs = ["pthread", "dl"]  # dl: the malloc API's dlsym(RTLD_NEXT) (glibc < 2.34)

        # find_package(bsalloc) + bsalloc::malloc_override: malloc and operator new of the program
        # that links it are bsalloc's (docs/malloc.md). lib/libbsalloc_malloc.so, for LD_PRELOAD,
        # is packaged too but is nothing to link against.
        override = self.cpp_info.components["malloc_override"]
        override.set_property("cmake_target_name", "bsalloc::malloc_override")
        override.set_property("pkg_config_name", "bsalloc-malloc-override")
        override.libs = ["bsalloc_malloc_override"]
        override.requires = ["bsalloc"]
        override.system_libs = ["dl"]
        override.exelinkflags = ["-Wl,-u,bsalloc_malloc_override_linked"]
        override.sharedlinkflags = ["-Wl,-u,bsalloc_malloc_override_linked"]

        # find_package(bsalloc COMPONENTS boost_pmr): the header-only <bsalloc/boost_pmr.hpp>.
        pmr = self.cpp_info.components["boost_pmr"]
        pmr.set_property("cmake_target_name", "bsalloc::boost_pmr")
        pmr.set_property("pkg_config_name", "bsalloc-boost-pmr")
        pmr.includedirs = []
        pmr.libdirs = []
        pmr.bindirs = []
        pmr.requires = ["bsalloc", "boost::container"]
