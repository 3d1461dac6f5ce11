#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks that conanfile.py and the CMake build agree, without Conan (it cannot be installed on
the build machines): the recipe is parsed with Python's ast, never imported; CMakeLists.txt,
cmake/*.cmake, cmake/*.in and test_package/ are read as text.

What must agree:
  version        set_version()'s regex applied to CMakeLists.txt gives project(VERSION); the
                 test_package asks for a version that this one satisfies
  options        each option reaches a CMake cache variable the build declares (shared ->
                 BUILD_SHARED_LIBS, fPIC -> CMAKE_POSITION_INDEPENDENT_CODE, which the build
                 must not force, others through generate()'s cache_variables); every cache
                 variable the build declares is either an option's or fixed by generate(), so
                 nothing outside the package id changes the binary
  settings       os/arch/compiler/build_type; the cppstd of check_min_cppstd() is the build's
                 cxx_std_NN, and the build does not override a profile's CMAKE_CXX_STANDARD
  requirements   one per find_package() of the library build (Threads aside: system_libs), same
                 minimum version, and a version range upper bound; find_dependency() in the
                 installed config <-> requirements consumers see (transitive_headers and
                 transitive_libs) and the components' requires; fmt's version check relaxed for
                 a range that spans majors
  package_info   CMake file/target names, library name, pkg-config name, public defines,
                 components, and cmake_config_version_compat equal to the installed package's
                 write_basic_package_version_file(COMPATIBILITY)
  licence        license is the SPDX id of LICENSE, which is exported and packaged
  cmake          a tool_requires("cmake/[>=X]") when cmake_minimum_required() is above 3.15
                 (what Conan's CMakeToolchain needs anyway)
  test_package   Conan 2 style: requires(self.tested_reference_str), no test_type
Prints each check; exits 1 if any fails.
"""
import ast
import fnmatch
import os
import re
import sys

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.join(os.path.dirname(__file__), ".."))
failures = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    print(("  ok: " if ok else "FAIL: ") + what)
    if not ok:
        failures.append(what)


def read(*parts):
    with open(os.path.join(root, *parts), encoding="utf-8") as f:
        return f.read()


def strip_cmake_comments(text):
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


# --- the recipe, through ast ------------------------------------------------------------------
recipe_src = read("conanfile.py")
tree = ast.parse(recipe_src)
cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
           and any(getattr(b, "id", getattr(b, "attr", "")) == "ConanFile" for b in n.bases))
attrs = {}
methods = {}
for node in cls.body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        try:
            attrs[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            attrs[node.targets[0].id] = None
    elif isinstance(node, ast.FunctionDef):
        methods[node.name] = node


def calls(method, name):
    """Calls in a method whose function is `name` or `<anything>.name`."""
    out = []
    if method not in methods:
        return out
    for n in ast.walk(methods[method]):
        if isinstance(n, ast.Call):
            f = n.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if fname == name:
                out.append(n)
    return out


def lit(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def kw(call, key):
    for k in call.keywords:
        if k.arg == key:
            return lit(k.value)
    return None


def subscript_assigns(method, base_attr):
    """x.<base_attr>["KEY"] = value  ->  {KEY: value node}"""
    out = {}
    if method not in methods:
        return out
    for n in ast.walk(methods[method]):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute)
                        and t.value.attr == base_attr):
                    key = lit(t.slice)
                    if key is not None:
                        out[key] = n.value
    return out


# --- the CMake side ---------------------------------------------------------------------------
cml = strip_cmake_comments(read("CMakeLists.txt"))
install_cmake = strip_cmake_comments(read("cmake", "install.cmake"))
config_in = strip_cmake_comments(read("cmake", "bsallocConfig.cmake.in"))
pc_in = read("cmake", "bsalloc.pc.in")
build_text = cml + "\n" + install_cmake

print("[recipe] version")
m = re.search(r"project\(\s*bsalloc\s+VERSION\s+([0-9.]+)", cml)
project_version = m.group(1) if m else None
check(project_version is not None, f"CMakeLists.txt: project(bsalloc VERSION {project_version})")
regex = None
for c in calls("set_version", "search"):
    if c.args and isinstance(lit(c.args[0]), str):
        regex = lit(c.args[0])
recipe_version = None
if regex:
    mm = re.search(regex, read("CMakeLists.txt"))
    recipe_version = mm.group(1) if mm else None
elif isinstance(attrs.get("version"), str):
    recipe_version = attrs["version"]
check(recipe_version == project_version,
      f"recipe version {recipe_version} (set_version) == project version {project_version}")
tp = strip_cmake_comments(read("test_package", "CMakeLists.txt"))
m = re.search(r"find_package\(\s*bsalloc\s+([0-9.]+)", tp)
tp_want = m.group(1) if m else None
compat = re.search(r"write_basic_package_version_file\([^)]*COMPATIBILITY\s+(\w+)", install_cmake, re.S)
compat = compat.group(1) if compat else None
if tp_want and project_version:
    want = tp_want.split(".")
    have = project_version.split(".")
    ok = {"SameMinorVersion": have[:2] == (want + ["0"])[:2],
          "SameMajorVersion": have[0] == want[0],
          "AnyNewerVersion": True, "ExactVersion": have == want}.get(compat, False)
    ok = ok and [int(x) for x in have] >= [int(x) for x in want]
    check(ok, f"test_package's find_package(bsalloc {tp_want}) accepts {project_version} ({compat})")

print("[recipe] options and cache variables")
options = attrs.get("options") or {}
defaults = attrs.get("default_options") or {}
cache_vars = subscript_assigns("generate", "cache_variables")
declared = set(re.findall(r"option\(\s*(\w+)", build_text))
declared |= set(re.findall(r"set\(\s*(\w+)\s+[^)]*\bCACHE\b", build_text))
builtin = {"shared": "BUILD_SHARED_LIBS", "fPIC": "CMAKE_POSITION_INDEPENDENT_CODE"}
option_vars = {}
for opt in options:
    check(opt in defaults, f"option {opt} has a default")
    if opt in builtin:
        option_vars[opt] = builtin[opt]
        continue
    # generate(): tc.cache_variables["X"] = <expression using self.options.<opt>>
    for var, value in cache_vars.items():
        if f"options.{opt}" in ast.unparse(value):
            option_vars[opt] = var
    check(opt in option_vars, f"option {opt} is passed to CMake by generate()")
check("BUILD_SHARED_LIBS" in declared, "shared -> option(BUILD_SHARED_LIBS) in CMakeLists.txt")
if "fPIC" in options:
    forced = re.search(r"(?<!CMAKE_)POSITION_INDEPENDENT_CODE\s+(ON|TRUE|1)\b", cml)
    guarded = re.search(r"if\(\s*NOT\s+DEFINED\s+CMAKE_POSITION_INDEPENDENT_CODE\s*\)\s*"
                        r"set\(\s*CMAKE_POSITION_INDEPENDENT_CODE", cml)
    unguarded = len(re.findall(r"set\(\s*CMAKE_POSITION_INDEPENDENT_CODE", cml)) - (1 if guarded else 0)
    check(not forced and unguarded == 0,
          "fPIC -> CMAKE_POSITION_INDEPENDENT_CODE is honoured (no target forces PIC)")
for opt, var in option_vars.items():
    if opt not in builtin:
        check(var in declared, f"option {opt} -> cache variable {var}, declared by the build")
# Every cache variable the build declares: an option's, or fixed by generate().
not_in_binary = {"BSALLOC_INSTALL_CMAKEDIR": "the recipe removes lib/cmake in package()",
                 "BSALLOC_INSTALL_PKGCONFIGDIR": "the recipe removes lib/pkgconfig in package()"}
mapped = set(option_vars.values())
# build_type -> CMAKE_BUILD_TYPE (CMakeToolchain); the build's own default must yield to it.
if "CMAKE_BUILD_TYPE" in declared:
    check(re.search(r"if\(\s*NOT\s+CMAKE_BUILD_TYPE\b", cml) is not None,
          "CMAKE_BUILD_TYPE: setting build_type; the build's default applies only when none is given")
    mapped.add("CMAKE_BUILD_TYPE")
for var in sorted(declared):
    if var in mapped:
        continue
    if var in not_in_binary:
        check(True, f"{var}: no part of the binary ({not_in_binary[var]})")
        continue
    fixed = var in cache_vars and lit(cache_vars[var]) is not None
    check(fixed, f"{var}: fixed by generate() ({lit(cache_vars[var]) if fixed else 'not set'})")
for var in cache_vars:
    check(var in declared, f"generate() sets {var}, which the build declares")

print("[recipe] settings and C++ standard")
check(set(attrs.get("settings") or ()) == {"os", "arch", "compiler", "build_type"},
      "settings: os, arch, compiler, build_type")
m = re.search(r"target_compile_features\(\s*bsalloc\s+PUBLIC\s+cxx_std_(\d+)", cml)
cxx_std = int(m.group(1)) if m else None
min_cppstd = attrs.get("_min_cppstd")
used = [c for c in calls("validate", "check_min_cppstd")]
check(bool(used), "validate() calls check_min_cppstd")
check(min_cppstd == cxx_std, f"check_min_cppstd {min_cppstd} == cxx_std_{cxx_std} of the target")
check(not re.search(r"^\s*set\(\s*CMAKE_CXX_STANDARD\s", cml, re.M) or
      re.search(r"if\(\s*NOT\s+DEFINED\s+CMAKE_CXX_STANDARD\s*\)", cml),
      "CMAKE_CXX_STANDARD is only a default (a profile's cppstd wins)")
validate_src = ast.unparse(methods["validate"]) if "validate" in methods else ""
check("Linux" in validate_src and "settings.os" in validate_src, "validate() accepts Linux only")
check(bool(attrs.get("_compilers_minimum_version")), "validate() checks minimum compiler versions")

print("[recipe] requirements")
requires = {}
for c in calls("requirements", "requires"):
    ref = lit(c.args[0]) if c.args else None
    if isinstance(ref, str):
        name, _, rng = ref.partition("/")
        requires[name] = {"range": rng, "transitive_headers": kw(c, "transitive_headers"),
                          "transitive_libs": kw(c, "transitive_libs")}
check(not any(re.search(r"^boost/\*:", k) or k.startswith("*") for k in defaults),
      "default_options force no option on other packages")
find_calls = re.findall(r"find_package\(\s*(\w+)([^)]*)\)", cml)
cmake_to_conan = {"fmt": "fmt", "Boost": "boost"}
system = {"Threads"}
found = {}
for pkg, rest in find_calls:
    if pkg in system:
        continue
    ver = re.match(r"\s*([0-9][0-9.]*)", rest)
    found[pkg] = ver.group(1) if ver else None
    conan = cmake_to_conan.get(pkg, pkg.lower())
    check(conan in requires, f"find_package({pkg}) <-> requires(\"{conan}/...\")")
    if conan in requires:
        rng = requires[conan]["range"]
        low = re.search(r">=\s*([0-9.]+)", rng)
        check(rng.startswith("[") and low is not None and "<" in rng,
              f"{conan}: a version range with bounds ({rng}), not a pin")
        check(low is not None and found[pkg] is not None and low.group(1) == found[pkg],
              f"{conan}: range lower bound {low.group(1) if low else None} == "
              f"find_package({pkg} {found[pkg]})")
for conan in requires:
    check(conan in {cmake_to_conan.get(p, p.lower()) for p in found},
          f"requires(\"{conan}\") is found by CMakeLists.txt")
# Consumer-visible: what the installed config find_dependency()s unconditionally, and what a
# component requires.
top_config = config_in.split("foreach(", 1)[0]
public_deps = {cmake_to_conan.get(p, p.lower()) for p in re.findall(r"find_dependency\(\s*(\w+)", top_config)
               if p not in system}
components = {}
comp_assign = {}
for n in ast.walk(methods.get("package_info", ast.Module(body=[], type_ignores=[]))):
    if (isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Subscript)
            and isinstance(n.value.value, ast.Attribute) and n.value.value.attr == "components"):
        comp_assign[n.targets[0].id] = lit(n.value.slice)
for n in ast.walk(methods.get("package_info", ast.Module(body=[], type_ignores=[]))):
    if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Attribute):
        t = n.targets[0]
        owner = getattr(t.value, "id", None)
        if owner in comp_assign:
            components.setdefault(comp_assign[owner], {})[t.attr] = lit(n.value)
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "set_property":
        owner = getattr(n.func.value, "id", None)
        if owner in comp_assign and len(n.args) == 2:
            components.setdefault(comp_assign[owner], {})[lit(n.args[0])] = lit(n.args[1])
core = components.get("bsalloc", {})
core_reqs = {r.split("::")[0] for r in core.get("requires") or []}
check(core_reqs == public_deps,
      f"component bsalloc requires {sorted(core_reqs)} == installed config's find_dependency "
      f"{sorted(public_deps)}")
visible = set()
for comp in components.values():
    visible |= {r.split("::")[0] for r in comp.get("requires") or [] if "::" in r}
for conan, info in requires.items():
    want = conan in visible
    check(bool(info["transitive_headers"]) == want and bool(info["transitive_libs"]) == want,
          f"{conan}: transitive_headers/libs {'on' if want else 'off'} "
          f"({'a component requires it' if want else 'no component requires it'})")
# Components <-> the installed config's components.
cfg_comps = set(re.findall(r'_bsalloc_comp\s+STREQUAL\s+"(\w+)"', config_in))
# Targets installed into bsallocTargets besides bsalloc::bsalloc (always there, no COMPONENTS
# needed: e.g. bsalloc::malloc_override): each is a Conan component of the same name, whose
# library is that target's output.
exported = {}
for cm in [os.path.join(root, "CMakeLists.txt")] + [
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
        if f == "CMakeLists.txt" and os.path.relpath(d, root).split(os.sep)[0] in ("malloc",)]:
    text = open(cm).read()
    for tgt, name in re.findall(r"set_target_properties\((\w+)\s+PROPERTIES\s+EXPORT_NAME\s+(\w+)\)",
                                text):
        if re.search(r"install\(TARGETS\s+%s\s+EXPORT\s+bsallocTargets" % tgt, text):
            exported[name] = tgt
for name, tgt in sorted(exported.items()):
    comp = components.get(name, {})
    check(comp.get("libs") == [tgt],
          f"exported target bsalloc::{name}: component {name} with libs {comp.get('libs')} == [{tgt!r}]")
check(set(components) - {"bsalloc"} - set(exported) == cfg_comps,
      f"components {sorted(set(components) - {'bsalloc'} - set(exported))} == config's {sorted(cfg_comps)}")
for comp in cfg_comps:
    m = re.search(r"add_library\(\s*bsalloc::%s\b.*?INTERFACE_LINK_LIBRARIES\s+\"([^\"]*)\"" % comp,
                  config_in, re.S)
    links = set(m.group(1).split(";")) if m else set()
    reqs = components.get(comp, {}).get("requires") or []
    conan_links = {("bsalloc::bsalloc" if r == "bsalloc" else
                    {"boost::container": "Boost::container"}.get(r, r)) for r in reqs}
    check(links == conan_links, f"component {comp}: links {sorted(links)} == requires {sorted(conan_links)}")
    check(components.get(comp, {}).get("cmake_target_name") == f"bsalloc::{comp}",
          f"component {comp}: cmake_target_name bsalloc::{comp}")
# fmt: find_package(fmt 9) against a Conan fmt 10/11 needs AnyNewerVersion in CMakeDeps.
deps_props = {}
for c in calls("generate", "set_property"):
    if len(c.args) == 3:
        deps_props[(lit(c.args[0]), lit(c.args[1]))] = lit(c.args[2])
for pkg, ver in found.items():
    conan = cmake_to_conan.get(pkg, pkg.lower())
    if conan not in requires or ver is None:
        continue
    rng = requires[conan]["range"]
    low = re.search(r">=\s*(\d+)", rng)
    high = re.search(r"<\s*(\d+)", rng)
    spans = low and high and int(high.group(1)) - int(low.group(1)) > 1
    if spans:
        check(deps_props.get((conan, "cmake_config_version_compat")) == "AnyNewerVersion",
              f"{conan}: range {rng} spans majors and find_package({pkg} {ver}) has a version: "
              "CMakeDeps told AnyNewerVersion")

print("[recipe] package_info")
pi = ast.unparse(methods["package_info"]) if "package_info" in methods else ""
m = re.search(r"install\(\s*EXPORT\s+\w+[^)]*NAMESPACE\s+(\S+)", install_cmake, re.S)
namespace = m.group(1) if m else None
m = re.search(r"EXPORT_NAME\s+(\w+)", cml)
export_name = m.group(1) if m else None
check(core.get("cmake_target_name") == f"{namespace}{export_name}",
      f"cmake_target_name {core.get('cmake_target_name')} == {namespace}{export_name}")
check("set_property('cmake_file_name', 'bsalloc')" in pi and
      os.path.exists(os.path.join(root, "cmake", "bsallocConfig.cmake.in")),
      "cmake_file_name bsalloc == bsallocConfig.cmake")
check(core.get("libs") == ["bsalloc"] and not re.search(r"OUTPUT_NAME", cml),
      "libs ['bsalloc'] == the library target's output name")
check("set_property('pkg_config_name', 'bsalloc')" in pi and
      os.path.exists(os.path.join(root, "cmake", "bsalloc.pc.in")), "pkg_config_name bsalloc == bsalloc.pc")
pub_defs = re.findall(r"target_compile_definitions\(\s*bsalloc\s+PUBLIC\s+(\w+)", cml)
check(all(d in pi for d in pub_defs) and bool(pub_defs),
      f"public definitions {pub_defs} are in package_info's defines")
check("pthread" in (core.get("system_libs") or []) and "Threads::Threads" in cml,
      "Threads::Threads (public) <-> system_libs pthread")
check(f"set_property('cmake_config_version_compat', '{compat}')" in pi,
      f"cmake_config_version_compat == the installed package's COMPATIBILITY {compat}")

print("[recipe] licence and sources")
lic = os.path.join(root, "LICENSE")
check(attrs.get("license") == "Apache-2.0" and os.path.exists(lic) and
      "Apache License" in open(lic, encoding="utf-8").read(2000) and
      "Version 2.0" in open(lic, encoding="utf-8").read(2000),
      f"license {attrs.get('license')} == LICENSE (Apache License 2.0)")
for a in ("homepage", "url", "description", "topics"):
    check(bool(attrs.get(a)), f"recipe has {a}")
m = re.search(r"HOMEPAGE_URL\s+\"([^\"]+)\"", cml)
check(m is not None and m.group(1) == attrs.get("homepage"),
      "homepage == project(HOMEPAGE_URL) (bsalloc.pc's URL)")
check("@PROJECT_HOMEPAGE_URL@" in pc_in, "bsalloc.pc carries the URL")
package_src = ast.unparse(methods["package"]) if "package" in methods else ""
check("LICENSE" in package_src and "licenses" in package_src, "package() copies LICENSE to licenses/")
exports = attrs.get("exports_sources") or ()
# Everything the library build reads (tests, examples, perf are off in generate()).
needed = {"CMakeLists.txt", "LICENSE"}
for path in re.findall(r"\$\{(?:PROJECT|CMAKE_CURRENT)_SOURCE_DIR\}/([\w./*-]+)", build_text):
    needed.add(path)
for path in re.findall(r"(?:configure_file|include)\(\s*(cmake/[\w./-]+)", build_text):
    needed.add(path)
for path in sorted(needed):
    probe = path.replace("*", "x")
    check(any(fnmatch.fnmatch(probe, pat) or probe == pat or pat.startswith(probe + "/")
              for pat in exports),
          f"exports_sources covers {path}")

print("[recipe] cmake and test_package")
m = re.search(r"cmake_minimum_required\(\s*VERSION\s+([0-9]+(?:\.[0-9]+)*)", cml)
cmin = tuple(int(x) for x in m.group(1).split(".")) if m else None
tool = [lit(c.args[0]) for c in calls("build_requirements", "tool_requires") if c.args]
cmake_tool = [t for t in tool if isinstance(t, str) and t.startswith("cmake/")]
if cmin and cmin > (3, 15):
    low = re.search(r">=\s*([0-9.]+)", cmake_tool[0]) if cmake_tool else None
    check(bool(low) and tuple(int(x) for x in low.group(1).split(".")) >= cmin,
          f"cmake_minimum_required {m.group(1)} > 3.15: tool_requires cmake >= it")
else:
    check(True, f"cmake_minimum_required {m.group(1) if m else '?'} <= 3.15 (CMakeToolchain's own "
          "minimum): no tool_requires(cmake) needed")
tp_recipe = read("test_package", "conanfile.py")
check("tested_reference_str" in tp_recipe and "test_type" not in tp_recipe,
      "test_package: requires(self.tested_reference_str), no Conan 1 test_type")

print(f"check-recipe: {checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
