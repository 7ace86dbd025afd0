// @ts-check
/**
 * Python's memory after numpy and the engine are imported, saved once and started from later.
 *
 * Pyodide 0.27 saves its WASM memory (loadPyodide's `_makeSnapshot`, `makeMemorySnapshot`) and starts
 * from those bytes (`_loadSnapshot`), but only the memory: numpy's extension modules are WebAssembly
 * modules of their own, whose code and function-table entries live outside it, and the files Python
 * reads live in Emscripten's JS-side file system. A snapshot taken after `import numpy` therefore
 * keeps three things beside the memory:
 *
 *   libs    each extension module Pyodide loaded: its path and where the dynamic linker placed it
 *           (memory base and size, table base and size). Recorded by passing the linker a handle
 *           of our own, the struct in which Emscripten's dlopen keeps those four numbers.
 *   slots   the function-table entries the linker added outside the modules' own ranges (exported
 *           functions whose address was taken: PyInit_*, numpy.random's C API), by module and name.
 *   files   the site-packages and home folders: numpy's and the engine's Python files and .so files.
 *
 * A restore starts Python from the memory, writes the files back, and loads each needed module again
 * through the same linker call with a handle that names the recorded bases: Emscripten then reuses
 * them instead of allocating, so every pointer to the module's data and every table index held in the
 * memory stays valid. Instantiating a module re-initialises its data segment and runs its
 * constructors, so the module's memory range is saved before and written back after: it holds the
 * state numpy had when the snapshot was taken. The table slots are given the same numbers as before
 * (their GOT entries are created with the recorded index before the module loads, so the linker does
 * not hand out new ones), and the table is grown to its recorded length first, so nothing else lands
 * on them. Anything that does not match what was recorded throws: the caller starts normally.
 *
 * The saved bytes, one buffer: [Pyodide's snapshot][files, concatenated][meta JSON][u32 LE meta length].
 * Pyodide's snapshot comes first so that its own header check (magic number, build id) sees byte 0.
 */

/** Folders whose files a snapshot carries (numpy in site-packages, our wheels in the home folder). */
const FILE_DIRS = ["/lib/python3.12/site-packages", "/home/pyodide"];
/** ...except what Python never reads at run time: type stubs, and the C headers, Cython declarations
 *  and static libraries numpy ships for building extensions against it (133 of the 525 files of the
 *  build's snapshot, 1.1 MB; every file costs a restore a write into Pyodide's file system). */
const NOT_CARRIED = /\.(pyi|h|pxd|pyx|c|a|pc)$|\/py\.typed$/;

/** The layout of Emscripten's `struct dso` that its dynamic linker reads (library_dylink.js). */
const DSO = { size: 64, loaded: 8, memoryBase: 12, memorySize: 16, tableBase: 20, tableSize: 24 };

const FORMAT = 1;

/**
 * Record where Pyodide's linker places every library it loads from now on (until `stop()`).
 * @param {any} py a Pyodide instance started with `_makeSnapshot`
 * @returns {{stop: () => void, libs: {name: string, handle: number, global: boolean}[], tableBefore: number}}
 */
export function recordLibraries(py) {
  const M = py._module;
  const original = M.loadDynamicLibrary;
  /** @type {{name: string, handle: number, global: boolean}[]} */ const libs = [];
  M.loadDynamicLibrary = function (/** @type {string} */ name, /** @type {any} */ flags, /** @type {any} */ scope, /** @type {number} */ handle) {
    if (!handle && !M.LDSO.loadedLibsByName[name]) {
      handle = M._calloc(DSO.size, 1);                   // the linker writes the bases it chose into it
      libs.push({ name, handle, global: Boolean(flags && flags.global) });
    }
    return original.call(this, name, flags, scope, handle);
  };
  return { libs, tableBefore: M.wasmTable.length, stop: () => { M.loadDynamicLibrary = original; } };
}

/**
 * The snapshot bytes of `py` now (see the file's comment), or throws when it cannot be taken.
 * @param {any} py  started with `_makeSnapshot`, libraries loaded under `recorder`
 * @param {{libs: {name: string, handle: number, global: boolean}[], tableBefore: number}} recorder
 *   recordLibraries' (stopped), or a restored instance's (`reattach`, then its own recordLibraries)
 * @returns {Uint8Array}
 */
export function takeSnapshot(py, recorder) {
  const [memory, rest] = takeSnapshotParts(py, recorder);
  const out = new Uint8Array(memory.length + rest.length);
  out.set(memory, 0);
  out.set(rest, memory.length);
  return out;
}

/**
 * The same bytes as takeSnapshot, as two parts to be written one after the other: Pyodide's
 * snapshot of the memory and the rest (`checksumParts` takes their checksum without joining
 * them). A snapshot taken with the model loaded is as large as the heap; this spares a second
 * copy of it.
 * @param {any} py @param {Parameters<typeof takeSnapshot>[1]} recorder @returns {[Uint8Array, Uint8Array]}
 */
export function takeSnapshotParts(py, recorder) {
  const M = py._module;
  const loaded = recorder.libs.map(({ name, handle, global }) => {
    if (!M.HEAP8[handle + DSO.loaded]) throw new Error(`snapshot: ${name} has no recorded placement`);
    return { name, global, memoryBase: M.HEAPU32[(handle + DSO.memoryBase) >> 2], memorySize: M.HEAP32[(handle + DSO.memorySize) >> 2],
             tableBase: M.HEAPU32[(handle + DSO.tableBase) >> 2], tableSize: M.HEAP32[(handle + DSO.tableSize) >> 2] };
  });
  // Only the modules Python imported are loaded again on a restore; the rest load normally if imported later.
  const modules = loaded.map((l) => moduleName(l.name));
  const imported = new Set(py.runPython(`import sys; [m for m in ${JSON.stringify(modules)} if m in sys.modules]`).toJs());
  const libs = loaded.filter((l, i) => imported.has(modules[i]));
  const tableAfter = M.wasmTable.length;
  /** @type {Map<Function, [string, string]>} */ const owner = new Map();
  for (const l of loaded) {
    for (const [sym, f] of Object.entries(M.LDSO.loadedLibsByName[l.name].exports)) if (typeof f === "function" && !owner.has(f)) owner.set(f, [l.name, sym]);
  }
  /** @type {[number, string, string][]} */ const slots = [];
  for (let i = recorder.tableBefore; i < tableAfter; i++) {
    if (loaded.some((l) => i >= l.tableBase && i < l.tableBase + l.tableSize)) continue;
    const f = M.wasmTable.get(i);
    if (!f) continue;
    const who = owner.get(f);
    if (!who) throw new Error(`snapshot: table slot ${i} holds a function of no recorded library`);
    slots.push([i, ...who]);
  }
  // Pyodide checks that its own JS-side state is as after a start; the packages list is ours to restore.
  const packages = Object.assign({}, py.loadedPackages);
  for (const k of Object.keys(packages)) delete py.loadedPackages[k];
  let memory;
  try { memory = py.makeMemorySnapshot(); } finally { Object.assign(py.loadedPackages, packages); }
  const { index, blob } = packFiles(M.FS);
  const meta = new TextEncoder().encode(JSON.stringify({ format: FORMAT, memory: memory.length, files: index, libs, slots,
                                                         tableBefore: recorder.tableBefore, tableAfter, packages }));
  const rest = new Uint8Array(blob.length + meta.length + 4);
  rest.set(blob, 0);
  rest.set(meta, blob.length);
  new DataView(rest.buffer).setUint32(rest.length - 4, meta.length, true);
  return [memory, rest];
}

/**
 * The 128-bit checksum that names saved bytes (32 hex digits): four lanes, each taking every fourth
 * 32-bit word as h = (h ^ word) * P + C (mod 2^32), then the last bytes and the length. Each step is
 * one-to-one in h and in the word, so one changed word always changes the result; several changes
 * cancel out only by chance (2^-32 per lane). It finds a damaged or cut-short file, not a forged one:
 * the file is in this origin's own storage. 23-29 ms for 52 MB in V8, where SHA-256 (crypto.subtle,
 * which holds the calling thread) took 75 ms on the booting worker's way to Python.
 * @param {Uint8Array} bytes @returns {string}
 */
export function checksum(bytes) {
  return checksumParts([bytes]);
}

/**
 * `checksum` of the parts' bytes end to end, without joining them.
 * @param {Uint8Array[]} parts @returns {string}
 */
export function checksumParts(parts) {
  const sum = new Checksum();
  for (const part of parts) sum.update(part);
  return sum.hex();
}

/** The checksum's step, h = (h ^ word) * P + C (mod 2^32); copied into each loop's locals, which V8
 *  reads faster than a module's bindings. */
const STEP = { P: 0x01000193, C: 0x7f4a7c15 };

/**
 * `checksum` of bytes given piece by piece, of any lengths (static/model-source.js checks a cached
 * model with it as it streams): up to 15 bytes wait for the next piece, so the lanes see the same
 * words as for the bytes in one piece.
 */
export class Checksum {
  constructor() {
    /** The four lanes. */ this.h = new Int32Array([0x6a09e667, 0xbb67ae85 | 0, 0x3c6ef372, 0xa54ff53a | 0]);
    /** Bytes seen. */ this.n = 0;
    /** Up to 15 bytes not yet taken into the lanes. */ this.rest = new Uint8Array(16);
    this.restLength = 0;
  }

  /** @param {Uint8Array} bytes */
  update(bytes) {
    this.n += bytes.length;
    let at = 0;
    if (this.restLength) {                               // complete the waiting 16 bytes first
      at = Math.min(16 - this.restLength, bytes.length);
      this.rest.set(bytes.subarray(0, at), this.restLength);
      this.restLength += at;
      if (this.restLength < 16) return;
      this.lanes(this.rest, 16);
      this.restLength = 0;
    }
    const whole = (bytes.length - at) & ~15;
    if (whole) {
      const view = bytes.subarray(at, at + whole);
      this.lanes(view.byteOffset % 4 === 0 ? view : view.slice(), whole);
    }
    this.rest.set(bytes.subarray(at + whole), 0);
    this.restLength = bytes.length - at - whole;
  }

  /** The lanes over `length` (a multiple of 16) bytes: one loop with the lanes in locals (a
   *  closure's variables, e.g. in a forEach callback, made it ~6x slower). @param {Uint8Array} bytes @param {number} length */
  lanes(bytes, length) {
    const { P, C } = STEP;
    const words = new Int32Array(bytes.buffer, bytes.byteOffset, length >> 2);
    let a = this.h[0], b = this.h[1], c = this.h[2], d = this.h[3];
    for (let i = 0; i < words.length; i += 4) {
      a = (Math.imul(a ^ words[i], P) + C) | 0;
      b = (Math.imul(b ^ words[i + 1], P) + C) | 0;
      c = (Math.imul(c ^ words[i + 2], P) + C) | 0;
      d = (Math.imul(d ^ words[i + 3], P) + C) | 0;
    }
    this.h[0] = a; this.h[1] = b; this.h[2] = c; this.h[3] = d;
  }

  /** The 32 hex digits: the last words into the first lane, the last bytes into the second, then
   *  the length. (It does not change the state: more bytes may follow.) */
  hex() {
    const { P, C } = STEP;
    let [a, b, c, d] = this.h;
    const whole = this.restLength >> 2;
    const tail = new DataView(this.rest.buffer, 0, 16);
    for (let i = 0; i < whole; i++) a = (Math.imul(a ^ tail.getInt32(4 * i, true), P) + C) | 0;
    for (let i = whole * 4; i < this.restLength; i++) b = (Math.imul(b ^ this.rest[i], P) + C) | 0;
    c = (Math.imul(c ^ (this.n % 0x100000000), P) + C) | 0;
    d = (Math.imul(d ^ Math.floor(this.n / 0x100000000), P) + C) | 0;
    return [a, b, c, d].map((x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
  }
}

/**
 * Split saved bytes into Pyodide's part (for `loadPyodide({_loadSnapshot})`) and ours; throws if they are not ours.
 * @param {Uint8Array} bytes @returns {{memory: Uint8Array, meta: any, files: Uint8Array}}
 */
export function parseSnapshot(bytes) {
  if (bytes.byteOffset % 4 !== 0 || bytes.length < 8) throw new Error("snapshot: too short");
  const metaLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(bytes.length - 4, true);
  if (metaLength > bytes.length - 4) throw new Error("snapshot: bad meta length");
  const meta = JSON.parse(new TextDecoder().decode(bytes.subarray(bytes.length - 4 - metaLength, bytes.length - 4)));
  const filesEnd = bytes.length - 4 - metaLength;
  if (meta.format !== FORMAT || !(meta.memory > 0 && meta.memory <= filesEnd)) throw new Error("snapshot: another format");
  return { memory: bytes.subarray(0, meta.memory), meta, files: bytes.subarray(meta.memory, filesEnd) };
}

/**
 * After `loadPyodide({_loadSnapshot: parsed.memory})`: the files written back and numpy's modules
 * loaded again where they were. Throws on anything unexpected (the instance is then unusable).
 * Returns the libraries it placed, with their handles, and the table's length before them: with a
 * recordLibraries of the instance for whatever loads later, what takeSnapshot needs to snapshot a
 * restored instance (one started with `_makeSnapshot` as well).
 * @param {any} py @param {{meta: any, files: Uint8Array}} parsed
 * @returns {Promise<{libs: {name: string, handle: number, global: boolean}[], tableBefore: number}>}
 */
export async function reattach(py, { meta, files }) {
  const M = py._module;
  /** @type {Map<string, Uint8Array>} */ const byPath = new Map();
  // Each folder is made once: mkdirTree tries every level of the path and catches the error each
  // existing one raises (for ~500 files, 10 of the 30 ms this loop took in Chromium).
  const made = new Set();
  let at = 0;
  for (const [path, size] of meta.files) {
    if (at + size > files.length) throw new Error("snapshot: files cut short");
    const data = files.subarray(at, at + size);
    at += size;
    byPath.set(path, data);
    const dir = path.slice(0, path.lastIndexOf("/"));
    if (!made.has(dir)) { M.FS.mkdirTree(dir); made.add(dir); }
    M.FS.writeFile(path, data);
  }
  countArgsOfThisRuntime(M);
  if (M.wasmTable.length > meta.tableBefore) throw new Error("snapshot: the function table is not as recorded");
  M.wasmTable.grow(meta.tableAfter - M.wasmTable.length);
  const needed = new Set(meta.libs.map((/** @type {any} */ l) => l.name));
  const slots = meta.slots.filter((/** @type {any} */ [, lib]) => needed.has(lib));
  for (const [index, , sym] of slots) {
    const got = M.GOT[sym];
    if (!got) M.GOT[sym] = new WebAssembly.Global({ value: "i32", mutable: true }, index);
    else if (got.value === 0) got.value = index;
    else if (got.value !== index) throw new Error(`snapshot: ${sym} is already at another table slot`);
  }
  /** @type {{name: string, handle: number, global: boolean}[]} */ const placed = [];
  const fs = { findObject: (/** @type {string} */ p) => (byPath.has(p) ? {} : null), readFile: (/** @type {string} */ p) => byPath.get(p) };
  for (const lib of meta.libs) {
    if (!byPath.has(lib.name)) throw new Error(`snapshot: ${lib.name} is not among its files`);
    const state = M.HEAPU8.slice(lib.memoryBase, lib.memoryBase + lib.memorySize);
    const handle = M._calloc(DSO.size, 1);
    placed.push({ name: lib.name, handle, global: lib.global });
    M.HEAP8[handle + DSO.loaded] = 1;
    M.HEAPU32[(handle + DSO.memoryBase) >> 2] = lib.memoryBase;
    M.HEAP32[(handle + DSO.memorySize) >> 2] = lib.memorySize;
    M.HEAPU32[(handle + DSO.tableBase) >> 2] = lib.tableBase;
    M.HEAP32[(handle + DSO.tableSize) >> 2] = lib.tableSize;
    await M.loadDynamicLibrary(lib.name, { loadAsync: true, nodelete: true, allowUndefined: true, global: lib.global, fs },
                               lib.global ? null : {}, handle);
    M.HEAPU8.set(state, lib.memoryBase);                // numpy's state as it was, not as initialised
    const base = lib.name.slice(lib.name.lastIndexOf("/") + 1);
    M.LDSO.loadedLibsByName[base] ||= M.LDSO.loadedLibsByName[lib.name];   // as Pyodide's loadDynlib does
  }
  if (M.wasmTable.length !== meta.tableAfter) throw new Error("snapshot: the function table grew while loading");
  for (const [index, lib, sym] of slots) {
    const f = M.LDSO.loadedLibsByName[lib].exports[sym];
    if (typeof f !== "function") throw new Error(`snapshot: ${sym} not exported by ${lib}`);
    M.wasmTable.set(index, f);
  }
  M.reportUndefinedSymbols();
  Object.assign(py.loadedPackages, meta.packages);
  return { libs: placed, tableBefore: meta.tableBefore };
}

/**
 * Point CPython's call trampoline at this runtime's own argument-counting function again. Pyodide
 * makes that function at start-up where the engine has WebAssembly GC (Chromium does, Node 20 does
 * not: then none) and writes its table index into `_PyRuntime`, which the restored memory has just
 * replaced with the value of the runtime that took the snapshot. Left as a snapshot from Node has it
 * (0), every call of a C function from Python would go through JavaScript; left as one from another
 * browser, it could name a slot this runtime never filled. @param {any} M
 */
function countArgsOfThisRuntime(M) {
  const offset = M.HEAP32[M.__PyEM_EMSCRIPTEN_COUNT_ARGS_OFFSET >> 2];
  M.HEAP32[(M.__PyRuntime + offset) >> 2] = M._PyEM_CountArgsPtr || 0;
}

/** "…/site-packages/numpy/_core/_multiarray_umath.cpython-312-wasm32-emscripten.so" -> "numpy._core._multiarray_umath"
 *  @param {string} path */
function moduleName(path) {
  const rel = path.replace(/^.*\/site-packages\//, "");
  return rel.replace(/\.cpython-[^/]*\.so$/, "").replace(/\.so$/, "").split("/").join(".");
}

/** Every file under FILE_DIRS: [[path, size], ...] and their bytes end to end. @param {any} FS */
function packFiles(FS) {
  /** @type {[string, number][]} */ const index = [];
  /** @type {Uint8Array[]} */ const parts = [];
  /** @param {string} dir */
  const walk = (dir) => {
    for (const name of FS.readdir(dir)) {
      if (name === "." || name === "..") continue;
      const path = `${dir}/${name}`;
      const mode = FS.lstat(path).mode;
      if (FS.isDir(mode)) walk(path);
      else if (FS.isFile(mode) && !(NOT_CARRIED.test(path) && !dir.includes(".dist-info"))) {
        const data = FS.readFile(path);
        index.push([path, data.length]);
        parts.push(data);
      }
    }
  };
  for (const dir of FILE_DIRS) if (FS.analyzePath(dir).exists) walk(dir);
  const blob = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { blob.set(p, at); at += p.length; }
  return { index, blob };
}
