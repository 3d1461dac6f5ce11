# Conan 2 recipe for bsalloc.
#
#   conan create . -o "bsalloc/*:shared=True" -o "bsalloc/*:checked=True"
#
# Package id: every option below is part of it (Conan's default), so shared/static, fPIC and
# checked mode each get their own binary, as do the usual settings (compiler, build type, ...).
# `checked` sets BSALLOC_CHECKED, i.e. the default of slab_resource_options::checked and the
# object pools' checks, which consumers see as BSALLOC_CHECKED_DEFAULT. Stats are always
# collected (there is no build option that changes them), so no option exists for them.
import os
import re

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load, rmdir

required_conan_version = ">=2.0"


class BsallocConan(ConanFile):
    name = "bsalloc"
    description = ("C++20 std::pmr allocator framework: buddy pages, per-core slabs, "
                   "typed pools")
    topics = ("allocator", "pmr", "memory-resource", "slab", "buddy")
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
        # bsalloc needs only header-only Boost libraries (Lockfree).
        "boost/*:header_only": True,
    }
    exports_sources = ("CMakeLists.txt", "cmake/*", "include/*", "src/*")

    def set_version(self):
        text = load(self, os.path.join(self.recipe_folder, "CMakeLists.txt"))
        self.version = re.search(r"project\(bsalloc\s+VERSION\s+([0-9.]+)", text).group(1)

    # fPIC is kept for the package id convention; the library target is always built
    # position-independent (POSITION_INDEPENDENT_CODE ON in CMakeLists.txt).
    def config_options(self):
        if self.settings.os == "Windows":
            del self.options.fPIC

    def configure(self):
        if self.options.shared:
            self.options.rm_safe("fPIC")

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        # fmt appears in bsalloc's public headers (stats formatting), hence transitive_headers;
        # Boost (Lockfree, header-only) is used by the sources only.
        self.requires("fmt/9.1.0", transitive_headers=True)
        self.requires("boost/1.83.0")

    def validate(self):
        check_min_cppstd(self, 20)

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["BSALLOC_CHECKED"] = bool(self.options.checked)
        tc.cache_variables["BSALLOC_BUILD_TESTS"] = False
        tc.cache_variables["BSALLOC_BUILD_EXAMPLES"] = False
        tc.cache_variables["BSALLOC_BUILD_PERF"] = False
        tc.cache_variables["BSALLOC_WERROR"] = False
        tc.cache_variables["BSALLOC_INSTALL"] = True
        tc.generate()
        CMakeDeps(self).generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        cmake = CMake(self)
        cmake.install()
        # Consumers get CMake and pkg-config files from Conan's generators (package_info).
        rmdir(self, os.path.join(self.package_folder, "lib", "cmake"))
        rmdir(self, os.path.join(self.package_folder, "lib", "pkgconfig"))
        copy(self, "LICENSE*", src=self.source_folder,
             dst=os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "bsalloc")
        self.cpp_info.set_property("cmake_target_name", "bsalloc::bsalloc")
        self.cpp_info.set_property("pkg_config_name", "bsalloc")
        self.cpp_info.libs = ["bsalloc"]
        self.cpp_info.defines = [f"BSALLOC_CHECKED_DEFAULT={1 if self.options.checked else 0}"]
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
