/* One pass over AVSS logits: every pixel's arg-max class and every frame's confusion counts.
 *
 * argmax_confusion(logits, labels, classes, confusion, num_classes, frame_start, frame_stop)
 *   logits     float32 [N, C, P]  (C-contiguous buffer; P = H*W)
 *   labels     int64   [N, P]     class indices in 0..C-1
 *   classes    int64   [N, P]     written: the first maximal logit's index; 0 where the pixel has a NaN
 *                                 logit or an infinite maximum (the official softmax gives NaNs there)
 *   confusion  int64   [N, C, C]  frames frame_start..frame_stop-1 overwritten: [frame, predicted, labelled]
 * Only frames [frame_start, frame_stop) are read and written, with the GIL released, so several
 * threads can fill disjoint frame ranges of the same buffers at once.
 *
 * The pixels of a frame are taken in blocks: a block's running maxima and indices stay in the L1
 * cache while the C class rows stream through once, four rows per sweep of the block (a strict '>'
 * keeps the first maximum).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PIXEL_BLOCK 2048
#define ROWS_PER_SWEEP 4

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
/* One build runs the widest vector unit the processor has (the ifunc resolver picks at load time). */
#define WIDEST_VECTORS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST_VECTORS
#endif

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define ALWAYS_INLINE __forceinline
#else
#define ALWAYS_INLINE inline
#endif

/* Folds `count` class rows (classes first.., `stride` floats apart) into a block's running maxima and
 * indices; a NaN is kept once seen, as max_pool2d keeps it. Inlined with a constant `count`. */
static ALWAYS_INLINE void fold_rows(const float *rows, int64_t stride, int32_t first, int32_t count,
                                     float *top, int32_t *best, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        float running = top[j];
        int32_t index = best[j];
        for (int32_t k = 0; k < count; ++k) {
            const float value = rows[k * stride + j];
            const int wins = (value > running) | (value != value);
            running = wins ? value : running;
            index = wins ? first + k : index;
        }
        top[j] = running;
        best[j] = index;
    }
}

/* Returns the number of labels outside 0..C-1 (their pixels are not counted). */
WIDEST_VECTORS
static int64_t frames_argmax_confusion(const float *logits, const int64_t *labels, int64_t *classes, int64_t *confusion,
                                       int64_t num_classes, int64_t pixels, int64_t frame_start, int64_t frame_stop) {
    float top[PIXEL_BLOCK];
    int32_t best[PIXEL_BLOCK];
    int64_t bad_labels = 0;
    for (int64_t f = frame_start; f < frame_stop; ++f) {
        const float *frame = logits + f * num_classes * pixels;
        int64_t *counts = confusion + f * num_classes * num_classes;
        memset(counts, 0, sizeof(int64_t) * num_classes * num_classes);
        for (int64_t start = 0; start < pixels; start += PIXEL_BLOCK) {
            const int64_t n = pixels - start < PIXEL_BLOCK ? pixels - start : PIXEL_BLOCK;
            const float *row = frame + start;
            for (int64_t j = 0; j < n; ++j) {
                top[j] = row[j];
                best[j] = 0;
            }
            int32_t c = 1;
            for (; c + ROWS_PER_SWEEP <= num_classes; c += ROWS_PER_SWEEP)
                fold_rows(frame + (int64_t)c * pixels + start, pixels, c, ROWS_PER_SWEEP, top, best, n);
            for (; c < num_classes; ++c)
                fold_rows(frame + (int64_t)c * pixels + start, pixels, c, 1, top, best, n);
            const int64_t *label = labels + f * pixels + start;
            int64_t *out = classes + f * pixels + start;
            for (int64_t j = 0; j < n; ++j) {
                const int64_t predicted = isfinite(top[j]) ? best[j] : 0;
                out[j] = predicted;
                if ((uint64_t)label[j] < (uint64_t)num_classes)
                    counts[predicted * num_classes + label[j]] += 1;
                else
                    bad_labels += 1;
            }
        }
    }
    return bad_labels;
}

static int check_buffer(const Py_buffer *view, const char *name, Py_ssize_t itemsize, char kind, Py_ssize_t items) {
    const char format = view->format ? view->format[strlen(view->format) - 1] : 'B';
    const int is_float = format == 'f' || format == 'd';
    if (view->itemsize != itemsize || is_float != (kind == 'f')) {
        PyErr_Format(PyExc_ValueError, "%s: expected %s items of %zd bytes, got format '%s' of %zd bytes", name,
                     kind == 'f' ? "float" : "integer", itemsize, view->format ? view->format : "B", view->itemsize);
        return 0;
    }
    if (view->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items, got %zd", name, items, view->len / itemsize);
        return 0;
    }
    return 1;
}

static PyObject *argmax_confusion(PyObject *self, PyObject *args) {
    static const char *names[4] = {"logits", "labels", "classes", "confusion"};
    PyObject *objects[4];
    Py_buffer views[4];
    Py_ssize_t num_classes, frame_start, frame_stop;
    int acquired = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOnnn", &objects[0], &objects[1], &objects[2], &objects[3], &num_classes,
                          &frame_start, &frame_stop))
        return NULL;
    PyObject *result = NULL;
    for (; acquired < 4; ++acquired) {
        const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (acquired >= 2 ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objects[acquired], &views[acquired], flags) < 0) {
            PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous%s buffer", names[acquired],
                         acquired >= 2 ? " writable" : "");
            goto done;
        }
    }
    if (num_classes < 1) {
        PyErr_Format(PyExc_ValueError, "num_classes must be positive, got %zd", num_classes);
        goto done;
    }
    const Py_ssize_t frames = views[3].len / (Py_ssize_t)sizeof(int64_t) / (num_classes * num_classes);
    const Py_ssize_t pixels = frames ? views[1].len / (Py_ssize_t)sizeof(int64_t) / frames : 0;
    if (!check_buffer(&views[3], names[3], sizeof(int64_t), 'i', frames * num_classes * num_classes) ||
        !check_buffer(&views[1], names[1], sizeof(int64_t), 'i', frames * pixels) ||
        !check_buffer(&views[2], names[2], sizeof(int64_t), 'i', frames * pixels) ||
        !check_buffer(&views[0], names[0], sizeof(float), 'f', frames * num_classes * pixels))
        goto done;
    if (frame_start < 0 || frame_stop > frames || frame_start > frame_stop) {
        PyErr_Format(PyExc_ValueError, "frames %zd..%zd outside the %zd frames given", frame_start, frame_stop, frames);
        goto done;
    }
    int64_t bad_labels;
    Py_BEGIN_ALLOW_THREADS
    bad_labels = frames_argmax_confusion(views[0].buf, views[1].buf, views[2].buf, views[3].buf, num_classes, pixels,
                                         frame_start, frame_stop);
    Py_END_ALLOW_THREADS
    if (bad_labels) {
        PyErr_Format(PyExc_ValueError, "labels: %lld values outside 0..%zd", (long long)bad_labels, num_classes - 1);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    while (acquired > 0)
        PyBuffer_Release(&views[--acquired]);
    return result;
}

static PyMethodDef methods[] = {
    {"argmax_confusion", argmax_confusion, METH_VARARGS,
     "argmax_confusion(logits f32 [N,C,P], labels i64 [N,P], classes i64 [N,P] (out), confusion i64 [N,C,C] (out), "
     "num_classes, frame_start, frame_stop)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_class_confusion",
    "Fused AVSS arg-max and per-frame confusion counts (see avseg.evaluation.semantic_metrics).", -1, methods, NULL,
    NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__class_confusion(void) { return PyModule_Create(&module); }
