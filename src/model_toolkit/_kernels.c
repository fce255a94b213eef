/*
 * Compiled inner loops for the two per-element jobs that numpy cannot do at disk speed.
 *
 * Why hand-written: numpy converts float32 to float16 in a scalar loop (~6 ns an element here),
 * ml_dtypes converts to float8 at ~10 ns an element, and neither writes NaN bits the way torch
 * does; pruning a 1G-parameter checkpoint to fp16 then costs seconds of CPU per core, more than
 * reading and writing its bytes. These loops give torch 2.13's bits (c10's conversions, NaN
 * payloads included; see casting.py) at well under 1 ns an element, and release the GIL so that
 * casting runs on all cores while the main thread reads and writes.
 *
 * The package works without this module (pure numpy, same bits, slower): it is an optional
 * extension, built where a C compiler is found.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Where the compiler can pick the loop's code at load time (GCC or clang, x86-64, glibc), an AVX2
 * copy of each loop handles 8 elements a step instead of SSE2's 4. */
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

static inline uint32_t bits_of(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float float_of(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* float32 -> float16, round to nearest even (F. Giesen's float_to_half_fast3_rtne), written
 * without branches so that the compiler vectorises it. NaN: sign|0x7E00|top payload bits. */
static inline uint16_t half_of(uint32_t x) {
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mag = x & 0x7FFFFFFFu;
    uint32_t clamped = mag < 0x47800000u ? mag : 0x47800000u; /* from 2^16 up: inf */
    uint32_t normal = (clamped + 0xC8000FFFu + ((clamped >> 13) & 1u)) >> 13;
    uint32_t subnormal = bits_of(float_of(clamped) + 0.5f) - 0x3F000000u;
    uint32_t result = clamped < 0x38800000u ? subnormal : normal;
    uint32_t nan = 0x7E00u | ((mag & 0x7FFFFFu) >> 13);
    result = mag > 0x7F800000u ? nan : result;
    return (uint16_t)(sign | result);
}

/* float32 -> bfloat16, round to nearest even; every NaN becomes 0xFFFF, as torch writes it. */
static inline uint16_t bfloat_of(uint32_t x) {
    uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
    return (uint16_t)((x & 0x7FFFFFFFu) > 0x7F800000u ? 0xFFFFu : rounded);
}

/* float32 -> float8_e4m3fn (c10's fp8e4m3fn_from_fp32_value), saturating at +-448 as torch's
 * copy kernel does; NaN: sign|0x7F. */
static inline uint8_t e4m3fn_of(uint32_t x) {
    uint32_t sign = (x >> 24) & 0x80u;
    uint32_t mag = x & 0x7FFFFFFFu;
    uint32_t clamped = mag < 0x43E00000u ? mag : 0x43E00000u; /* 448 */
    uint32_t denorm = bits_of(float_of(clamped) + float_of(141u << 23)) - (141u << 23);
    uint32_t normal = (clamped + ((uint32_t)(7 - 127) << 23) + 0x7FFFFu + ((clamped >> 20) & 1u)) >> 20;
    uint32_t result = clamped < (121u << 23) ? denorm : normal;
    result = mag > 0x7F800000u ? 0x7Fu : result;
    return (uint8_t)(sign | (result & 0x7Fu));
}

/* float32 -> float8_e5m2 (c10's fp8e5m2_from_fp32_value): overflow gives inf; NaN: sign|0x7F. */
static inline uint8_t e5m2_of(uint32_t x) {
    uint32_t sign = (x >> 24) & 0x80u;
    uint32_t mag = x & 0x7FFFFFFFu;
    uint32_t big = mag < (143u << 23) ? mag : (143u << 23);
    uint32_t denorm = bits_of(float_of(big) + float_of(134u << 23)) - (134u << 23);
    uint32_t normal = (big + ((uint32_t)(15 - 127) << 23) + 0xFFFFFu + ((big >> 21) & 1u)) >> 21;
    uint32_t result = big < (113u << 23) ? denorm : normal;
    result = mag >= (143u << 23) ? 0x7Cu : result;
    result = mag > 0x7F800000u ? 0x7Fu : result;
    return (uint8_t)(sign | (result & 0x7Fu));
}

#define NARROWING_LOOP(NAME, OUT_TYPE, CONVERT)                                   \
    VECTOR_CLONES static void NAME##_loop(const uint32_t *src, OUT_TYPE *dst, Py_ssize_t count) { \
        for (Py_ssize_t i = 0; i < count; i++) dst[i] = CONVERT(src[i]);          \
    }

NARROWING_LOOP(half_portable, uint16_t, half_of)

/* x86-64 CPUs since 2012 convert 8 floats to float16 in one instruction (F16C, round to nearest
 * even, NaN quieted with its top payload bits): the same bits as half_of, ~3x faster; torch's
 * own conversion uses it. Chosen at run time; other machines use the portable loop. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("avx,f16c"))) static void half_f16c(const uint32_t *src, uint16_t *dst,
                                                          Py_ssize_t count) {
    Py_ssize_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 values = _mm256_loadu_ps((const float *)(src + i));
        __m128i halves = _mm256_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(dst + i), halves);
    }
    for (; i < count; i++) dst[i] = half_of(src[i]);
}

static int has_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#else
#define half_f16c half_portable_loop
static int has_f16c(void) { return 0; }
#endif

static void (*half_loop)(const uint32_t *, uint16_t *, Py_ssize_t) = half_portable_loop;
NARROWING_LOOP(bfloat, uint16_t, bfloat_of)
NARROWING_LOOP(e4m3fn, uint8_t, e4m3fn_of)
NARROWING_LOOP(e5m2, uint8_t, e5m2_of)

typedef void (*narrowing_loop)(const uint32_t *, void *, Py_ssize_t);

/* narrow(src, dst): src holds float32 values, dst has room for as many narrow ones. */
static PyObject *narrow(PyObject *args, narrowing_loop loop, Py_ssize_t out_size) {
    Py_buffer src, dst;
    if (!PyArg_ParseTuple(args, "y*w*", &src, &dst)) return NULL;
    Py_ssize_t count = src.len / 4;
    if (src.len % 4 != 0 || dst.len != count * out_size) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    loop((const uint32_t *)src.buf, dst.buf, count);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;
}

static PyObject *f32_to_f16(PyObject *self, PyObject *args) {
    return narrow(args, (narrowing_loop)half_loop, 2);
}

/* Which float16 loop runs here: "f16c" or "portable" (for tests and the benchmark's notes). */
static PyObject *half_method(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(half_loop == half_portable_loop ? "portable" : "f16c");
}

/* use_portable_half(): the portable loop from now on, so that tests check it too. */
static PyObject *use_portable_half(PyObject *self, PyObject *unused) {
    half_loop = half_portable_loop;
    Py_RETURN_NONE;
}

/* use_best_half(): back to the fastest loop this CPU has. */
static PyObject *use_best_half(PyObject *self, PyObject *unused) {
    half_loop = has_f16c() ? half_f16c : half_portable_loop;
    Py_RETURN_NONE;
}
static PyObject *f32_to_bf16(PyObject *self, PyObject *args) {
    return narrow(args, (narrowing_loop)bfloat_loop, 2);
}
static PyObject *f32_to_e4m3fn(PyObject *self, PyObject *args) {
    return narrow(args, (narrowing_loop)e4m3fn_loop, 1);
}
static PyObject *f32_to_e5m2(PyObject *self, PyObject *args) {
    return narrow(args, (narrowing_loop)e5m2_loop, 1);
}

/* table_sum(values, table, is_half): the float64 sum of table[h] over the float16 bit patterns
 * h of `values` (float32, rounded to float16 first, or already float16 when is_half). The
 * metric's sigmoid sums: one pass, no intermediate array. Four sums, so additions overlap. */
static PyObject *table_sum(PyObject *self, PyObject *args) {
    Py_buffer values, table;
    int is_half;
    if (!PyArg_ParseTuple(args, "y*y*p", &values, &table, &is_half)) return NULL;
    Py_ssize_t width = is_half ? 2 : 4;
    if (table.len != 65536 * (Py_ssize_t)sizeof(float) || values.len % width != 0) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_ValueError, "expected a 65536-entry float32 table");
        return NULL;
    }
    const float *lookup = (const float *)table.buf;
    Py_ssize_t count = values.len / width, i = 0;
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    Py_BEGIN_ALLOW_THREADS
    if (is_half) {
        const uint16_t *src = (const uint16_t *)values.buf;
        for (; i + 4 <= count; i += 4)
            for (int lane = 0; lane < 4; lane++) sums[lane] += lookup[src[i + lane]];
        for (; i < count; i++) sums[0] += lookup[src[i]];
    } else {
        /* Rounded a block at a time by the vectorised loop, then looked up. */
        const uint32_t *src = (const uint32_t *)values.buf;
        uint16_t block[1024];
        for (; i < count; i += 1024) {
            Py_ssize_t size = count - i < 1024 ? count - i : 1024, j = 0;
            half_loop(src + i, block, size);
            for (; j + 4 <= size; j += 4)
                for (int lane = 0; lane < 4; lane++) sums[lane] += lookup[block[j + lane]];
            for (; j < size; j++) sums[0] += lookup[block[j]];
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&values);
    PyBuffer_Release(&table);
    return PyFloat_FromDouble((sums[0] + sums[1]) + (sums[2] + sums[3]));
}

/* q8_0(src, dst): GGUF's Q8_0 blocks of float32 values (32 a block), bit for bit as the gguf
 * package's numpy quantizer makes them (itself ggml-quants.c's reference): d = amax / 127 in
 * float32, each value times 1/d rounded half away from zero, d stored as float16 (round to
 * nearest even). numpy's path runs at ~80 M values a second on one core; quantizing an SDXL
 * UNET with it takes longer than reading and writing the file. Returns how many blocks hold a
 * NaN or an infinity: their bytes are not written here (the caller asks the package for them,
 * whose float-to-int casts of NaN are its platform's business). */
static inline float magnitude(float value) { return float_of(bits_of(value) & 0x7FFFFFFFu); }

VECTOR_CLONES
static Py_ssize_t q8_0_blocks(const float *x, uint8_t *out, Py_ssize_t blocks) {
    Py_ssize_t odd = 0;
    for (Py_ssize_t b = 0; b < blocks; b++, x += 32, out += 34) {
        float amax = 0.0f;
        uint32_t special = 0;
        for (int i = 0; i < 32; i++) {
            float a = magnitude(x[i]);
            amax = a > amax ? a : amax;
            special |= (bits_of(x[i]) & 0x7F800000u) == 0x7F800000u;
        }
        if (special) {
            odd++;
            continue;
        }
        float d = amax / 127.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        uint16_t half = half_of(bits_of(d));
        out[0] = (uint8_t)(half & 0xFF);
        out[1] = (uint8_t)(half >> 8);
        int8_t q[32];
        for (int i = 0; i < 32; i++) {
            float v = x[i] * id;
            float a = magnitude(v);
            float f = __builtin_floorf(a);
            float r = f + __builtin_floorf(2.0f * (a - f)); /* half away from zero, as np_roundf */
            q[i] = (int8_t)(int)(v < 0.0f ? -r : r);
        }
        memcpy(out + 2, q, 32);
    }
    return odd;
}

/* float16 bits -> float32, exactly (every float16 is a float32). */
static inline float float_of_half(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    if (exponent == 0x1F) return float_of(sign | 0x7F800000u | (mantissa << 13));
    if (exponent != 0) return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));
    float value = (float)mantissa * (1.0f / 16777216.0f); /* subnormal: mantissa * 2^-24 */
    return sign ? -value : value;
}

VECTOR_CLONES
static void q8_0_values(const uint8_t *blocks, float *out, Py_ssize_t count) {
    for (Py_ssize_t b = 0; b < count; b++, blocks += 34, out += 32) {
        float d = float_of_half((uint16_t)(blocks[0] | (blocks[1] << 8)));
        const int8_t *q = (const int8_t *)(blocks + 2);
        for (int i = 0; i < 32; i++) out[i] = (float)q[i] * d;
    }
}

/* q8_0_decode(src, dst): Q8_0 blocks -> float32 values, as the package's dequantize (the int8
 * times the float16 scale, in float32). */
static PyObject *q8_0_decode(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    if (!PyArg_ParseTuple(args, "y*w*", &src, &dst)) return NULL;
    Py_ssize_t blocks = src.len / 34;
    if (src.len % 34 != 0 || dst.len != blocks * 32 * 4) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match whole Q8_0 blocks");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    q8_0_values((const uint8_t *)src.buf, (float *)dst.buf, blocks);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;
}

static PyObject *q8_0(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    if (!PyArg_ParseTuple(args, "y*w*", &src, &dst)) return NULL;
    Py_ssize_t blocks = src.len / (4 * 32), odd;
    if (src.len % (4 * 32) != 0 || dst.len != blocks * 34) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match whole Q8_0 blocks");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    odd = q8_0_blocks((const float *)src.buf, (uint8_t *)dst.buf, blocks);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return PyLong_FromSsize_t(odd);
}

/* A value of a float kind (0 float32, 1 float16, 2 bfloat16) as float32, exactly. */
static inline float value_of(const void *data, int kind, Py_ssize_t i) {
    if (kind == 1) return float_of_half(((const uint16_t *)data)[i]);
    if (kind == 2) return float_of((uint32_t)((const uint16_t *)data)[i] << 16);
    return ((const float *)data)[i];
}

/* float16 -> float32 eight at a time (F16C): exact for every number; a NaN comes out quiet,
 * as torch's own conversion on these CPUs gives it. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx,f16c"))) static Py_ssize_t half_sum_f16c(
    const uint16_t *a, float fa, const float *b, float fb, float *out, Py_ssize_t count) {
    Py_ssize_t i = 0;
    __m256 va = _mm256_set1_ps(fa), vb = _mm256_set1_ps(fb);
    for (; i + 8 <= count; i += 8) {
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i)));
        __m256 y = b ? _mm256_mul_ps(_mm256_loadu_ps(b + i), vb) : _mm256_setzero_ps();
        __m256 sum = b ? _mm256_add_ps(_mm256_mul_ps(x, va), y) : x;
        _mm256_storeu_ps(out + i, sum);
    }
    return i; /* the rest by the portable loop */
}
static int fast_half = -1;
static int use_fast_half(void) {
    if (fast_half < 0) fast_half = has_f16c();
    return fast_half;
}
#else
static Py_ssize_t half_sum_f16c(const uint16_t *a, float fa, const float *b, float fb,
                                float *out, Py_ssize_t count) { return 0; }
static int use_fast_half(void) { return 0; }
#endif

VECTOR_CLONES
static void mix_loop(const void *a, int ka, const void *b, int kb, const void *c, int kc,
                     float fa, float fb, float *out, Py_ssize_t count) {
    if (c == NULL && ka == 1 && kb == 0 && use_fast_half()) { /* lora apply: W + delta * s */
        Py_ssize_t done = half_sum_f16c((const uint16_t *)a, fa, (const float *)b, fb, out, count);
        a = (const uint16_t *)a + done;
        b = (const float *)b + done;
        out += done;
        count -= done;
    }
    if (c == NULL) { /* weighted sum: a * fa + b * fb */
        for (Py_ssize_t i = 0; i < count; i++) {
            float x = value_of(a, ka, i) * fa, y = value_of(b, kb, i) * fb;
            out[i] = x + y;
        }
    } else { /* add difference: a + (b - c) * fb */
        for (Py_ssize_t i = 0; i < count; i++) {
            float d = value_of(b, kb, i) - value_of(c, kc, i);
            float e = d * fb;
            out[i] = value_of(a, ka, i) + e;
        }
    }
}

/* mix(a, ka, b, kb, c, kc, fa, fb, out): a merge's float32 values from its inputs' raw values
 * (float32, float16 or bfloat16 each; c None for a weighted sum), each operation rounded to
 * float32 as numpy's would be (no fused multiply-add), without numpy's temporaries. */
static PyObject *mix(PyObject *self, PyObject *args) {
    Py_buffer a, b, c = {0}, out;
    int ka, kb, kc;
    PyObject *c_object;
    float fa, fb;
    if (!PyArg_ParseTuple(args, "y*iy*iOiffw*", &a, &ka, &b, &kb, &c_object, &kc, &fa, &fb, &out))
        return NULL;
    int has_c = c_object != Py_None;
    if (has_c && PyObject_GetBuffer(c_object, &c, PyBUF_SIMPLE) != 0) {
        PyBuffer_Release(&a);
        PyBuffer_Release(&b);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t count = out.len / 4;
    static const Py_ssize_t widths[3] = {4, 2, 2};
    int ok = out.len % 4 == 0 && ka >= 0 && ka < 3 && kb >= 0 && kb < 3 && kc >= 0 && kc < 3 &&
             a.len == count * widths[ka] && b.len == count * widths[kb] &&
             (!has_c || c.len == count * widths[kc]);
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        mix_loop(a.buf, ka, b.buf, kb, has_c ? c.buf : NULL, kc, fa, fb, (float *)out.buf, count);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    if (has_c) PyBuffer_Release(&c);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes or kinds do not match");
        return NULL;
    }
    Py_RETURN_NONE;
}

VECTOR_CLONES
static void widen_loop(const void *a, int ka, float *out, Py_ssize_t count) {
    Py_ssize_t i = 0;
    if (ka == 1 && use_fast_half()) i = half_sum_f16c((const uint16_t *)a, 1.0f, NULL, 0.0f, out, count);
    for (; i < count; i++) out[i] = value_of(a, ka, i);
}

/* widen(a, ka, out): float32/16/bf16 values as float32, exactly (numpy's float16 widening is
 * a scalar loop; lora apply widens every changed tensor before adding its change). */
static PyObject *widen(PyObject *self, PyObject *args) {
    Py_buffer a, out;
    int ka;
    if (!PyArg_ParseTuple(args, "y*iw*", &a, &ka, &out)) return NULL;
    Py_ssize_t count = out.len / 4;
    static const Py_ssize_t widths[3] = {4, 2, 2};
    int ok = out.len % 4 == 0 && ka >= 0 && ka < 3 && a.len == count * widths[ka];
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        widen_loop(a.buf, ka, (float *)out.buf, count);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes or kinds do not match");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"mix", mix, METH_VARARGS, "A merge's float32 values from float32/16/bf16 inputs."},
    {"widen", widen, METH_VARARGS, "float32/16/bf16 values as float32, exactly."},
    {"q8_0", q8_0, METH_VARARGS, "float32 -> GGUF Q8_0 blocks, as the gguf package."},
    {"q8_0_decode", q8_0_decode, METH_VARARGS, "GGUF Q8_0 blocks -> float32, as the package."},
    {"f32_to_f16", f32_to_f16, METH_VARARGS, "float32 -> float16 bits, as torch."},
    {"f32_to_bf16", f32_to_bf16, METH_VARARGS, "float32 -> bfloat16 bits, as torch."},
    {"f32_to_e4m3fn", f32_to_e4m3fn, METH_VARARGS, "float32 -> float8_e4m3fn bits, as torch."},
    {"f32_to_e5m2", f32_to_e5m2, METH_VARARGS, "float32 -> float8_e5m2 bits, as torch."},
    {"table_sum", table_sum, METH_VARARGS, "Sum of a float16-indexed table over values."},
    {"half_method", half_method, METH_NOARGS, "The float16 loop in use."},
    {"use_portable_half", use_portable_half, METH_NOARGS, "Use the portable float16 loop."},
    {"use_best_half", use_best_half, METH_NOARGS, "Use the fastest float16 loop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    if (has_f16c()) half_loop = half_f16c;
    return PyModule_Create(&module);
}
