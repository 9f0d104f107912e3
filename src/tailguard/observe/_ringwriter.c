/* The reply path's decision ring writer (tailguard.observe.ring), compiled at first use.
 *
 * One METH_O call per decision copies it into the next free record of a shared-memory ring:
 * fixed fields, the key, the outputs, the engine's feature row and the assembler's write
 * times, then publishes the record by storing the ring's ``head`` with release order.  The
 * common case (a str key of at most key_bytes UTF-8 bytes or an int key, a model version and a
 * priority seen before) allocates nothing; anything else calls back into the Python helpers
 * of ``ring.py``, which the pure-Python writer uses too, so both write the same bytes.
 * The record layout (offsets) is described in ring.py's module docstring; the offsets reach
 * this file as constructor arguments, only the fixed part (0..88) is hard-coded here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#ifdef TG_NUMPY
/* Only the array struct and its inline accessors (no import_array, no API table): a decision's
 * outputs are a new array each call, and the buffer protocol would build its format and shape
 * info (an allocation) for every one of them. */
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/ndarraytypes.h>
#endif

#define H_HEAD 8     /* header u64 slots */
#define H_PENDING 9
#define H_CONSUMED 16
#define H_DROPPED 24

/* Decision fields read straight from the struct's slots when the object is exactly a Decision. */
enum { F_KEY, F_OUTPUTS, F_VERSION, F_RUNG_INDEX, F_FLAGS, F_PRIORITY, F_TIMINGS, N_FIELDS };

typedef struct {
    PyObject_HEAD
    Py_buffer ring;          /* the whole shared mapping (header + records) */
    int have_ring;
    uint64_t *hdr;
    char *recs;
    uint64_t cap, mask, consumed;  /* consumed: last seen, re-read only when the ring looks full */
    Py_ssize_t rec, key_bytes, o_out, o_feat, o_feat_end, o_writ, n_out, feat_len, writ_len;
    PyObject *engine, *asm_;
    PyObject *versions, *priorities;          /* dict label -> int id */
    PyObject *intern_version, *intern_priority, *key_slow, *outputs_slow;
    PyObject *wide_obj, *writ_obj;            /* cached buffers, checked by identity */
    Py_buffer wide, writ;
    PyTypeObject *decision_type, *ndarray_type;
    Py_ssize_t offsets[N_FIELDS];             /* slot offsets in a Decision (0: use getattr) */
    Py_ssize_t errors;
} Writer;

static PyObject *s_filled, *s_wide_row, *s_written_row;

static void drop_cached(Writer *self) {
    if (self->wide_obj) { PyBuffer_Release(&self->wide); Py_CLEAR(self->wide_obj); }
    if (self->writ_obj) { PyBuffer_Release(&self->writ); Py_CLEAR(self->writ_obj); }
}

static void release_all(Writer *self) {
    drop_cached(self);
    if (self->have_ring) { PyBuffer_Release(&self->ring); self->have_ring = 0; }
    self->hdr = NULL; self->recs = NULL;
}

/* The writer refers to the engine (whose hooks refer back to the ring, and so to the writer):
 * it takes part in the cyclic GC so that an engine and its ring can be collected. */
static int Writer_traverse(Writer *self, visitproc visit, void *arg) {
    Py_VISIT(self->engine); Py_VISIT(self->asm_);
    Py_VISIT(self->versions); Py_VISIT(self->priorities);
    Py_VISIT(self->intern_version); Py_VISIT(self->intern_priority);
    Py_VISIT(self->key_slow); Py_VISIT(self->outputs_slow);
    Py_VISIT(self->decision_type); Py_VISIT(self->ndarray_type);
    Py_VISIT(self->wide_obj); Py_VISIT(self->writ_obj);
    return 0;
}

static int Writer_clear(Writer *self) {
    release_all(self);
    Py_CLEAR(self->engine); Py_CLEAR(self->asm_);
    Py_CLEAR(self->versions); Py_CLEAR(self->priorities);
    Py_CLEAR(self->intern_version); Py_CLEAR(self->intern_priority);
    Py_CLEAR(self->key_slow); Py_CLEAR(self->outputs_slow);
    Py_CLEAR(self->decision_type); Py_CLEAR(self->ndarray_type);
    return 0;
}

static void Writer_dealloc(Writer *self) {
    PyObject_GC_UnTrack(self);
    Writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Writer(buffer, capacity, record_size, key_bytes, o_out, n_out, o_feat, width, o_writ, n_views,
 *        engine, assembler, versions, priorities, intern_version, intern_priority, key_slow,
 *        outputs_slow, decision_type, ndarray_type) */
static int Writer_init(Writer *self, PyObject *args, PyObject *kw) {
    PyObject *buf, *engine, *asm_, *versions, *priorities, *iv, *ip, *ks, *os_, *dt, *nt;
    Py_ssize_t cap, rec, kb, o_out, n_out, o_feat, width, o_writ, n_views;
    if (!PyArg_ParseTuple(args, "OnnnnnnnnnOOO!O!OOOOO!O!", &buf, &cap, &rec, &kb, &o_out, &n_out, &o_feat,
                          &width, &o_writ, &n_views, &engine, &asm_, &PyDict_Type, &versions, &PyDict_Type,
                          &priorities, &iv, &ip, &ks, &os_, &PyType_Type, &dt, &PyType_Type, &nt))
        return -1;
    if (cap <= 0 || (cap & (cap - 1)) || rec <= 0 || rec % 8 || kb < 8) {
        PyErr_SetString(PyExc_ValueError, "bad ring layout");
        return -1;
    }
    release_all(self);
    if (PyObject_GetBuffer(buf, &self->ring, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) return -1;
    self->have_ring = 1;
    if (self->ring.len < 256 + cap * rec) {
        release_all(self);
        PyErr_SetString(PyExc_ValueError, "ring buffer too small");
        return -1;
    }
    self->hdr = (uint64_t *)self->ring.buf;
    self->recs = (char *)self->ring.buf + 256;
    self->cap = (uint64_t)cap; self->mask = (uint64_t)cap - 1;
    self->rec = rec; self->key_bytes = kb;
    self->o_out = o_out; self->n_out = n_out;
    self->o_feat = o_feat; self->feat_len = 4 * width; self->o_feat_end = o_feat + 4 * width;
    self->o_writ = o_writ; self->writ_len = 8 * n_views;
#define SET(field, v) do { Py_INCREF(v); Py_XSETREF(self->field, v); } while (0)
    SET(engine, engine); SET(asm_, asm_); SET(versions, versions); SET(priorities, priorities);
    SET(intern_version, iv); SET(intern_priority, ip); SET(key_slow, ks); SET(outputs_slow, os_);
    SET(decision_type, (PyTypeObject *)dt); SET(ndarray_type, (PyTypeObject *)nt);
#undef SET
    self->consumed = 0;
    /* Each field's slot, from its member descriptor (a msgspec Struct's fields are slots). */
    static const char *names[N_FIELDS] = {"key", "outputs", "model_version", "rung_index", "flags",
                                          "priority", "timings_ns"};
    for (int i = 0; i < N_FIELDS; i++) {
        self->offsets[i] = 0;
        PyObject *desc = PyDict_GetItemString(((PyTypeObject *)dt)->tp_dict, names[i]);  /* borrowed */
        if (desc != NULL && Py_IS_TYPE(desc, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)desc)->d_member;
            if (m->type == T_OBJECT_EX || m->type == T_OBJECT) self->offsets[i] = m->offset;
        }
        if (self->offsets[i] == 0) { for (int j = 0; j < N_FIELDS; j++) self->offsets[j] = 0; break; }
    }
    return 0;
}

static PyObject *s_fields[N_FIELDS];

/* A new reference to field ``i`` of ``d`` (its slot when ``d`` is exactly a Decision). */
static inline PyObject *field(Writer *self, PyObject *d, int i) {
    if (Py_TYPE(d) == self->decision_type && self->offsets[0]) {
        PyObject *v = *(PyObject **)((char *)d + self->offsets[i]);
        if (v != NULL) { Py_INCREF(v); return v; }
    }
    return PyObject_GetAttr(d, s_fields[i]);
}

/* An int64 like PyLong_AsLongLong, 0 where that fails (never leaves an error set). */
static inline int64_t as_i64(PyObject *o) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    return (int64_t)v;
}

/* A table id: the dict's value, else the Python helper's answer (which interns the label). */
static int table_id(PyObject *dict, PyObject *helper, PyObject *label, uint16_t *out) {
    PyObject *id = PyDict_GetItemWithError(dict, label);  /* borrowed */
    if (id != NULL && PyLong_CheckExact(id)) { *out = (uint16_t)PyLong_AsLong(id); return 0; }
    PyErr_Clear();
    PyObject *r = PyObject_CallOneArg(helper, label);
    if (r == NULL) return -1;
    long v = PyLong_AsLong(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (uint16_t)v;
    return 0;
}

/* Copy a cached array row's bytes (refreshing the cache when the attribute is another object). */
static int copy_row(PyObject *owner, PyObject *name, PyObject **cached, Py_buffer *view, char *dst,
                    Py_ssize_t len) {
    PyObject *o = PyObject_GetAttr(owner, name);
    if (o == NULL) return -1;
    if (o != *cached) {
        if (*cached) { PyBuffer_Release(view); Py_CLEAR(*cached); }
        if (PyObject_GetBuffer(o, view, PyBUF_C_CONTIGUOUS) < 0) { Py_DECREF(o); return -1; }
        *cached = o;  /* keeps the reference */
    } else {
        Py_DECREF(o);
    }
    Py_ssize_t n = view->len < len ? view->len : len;
    memcpy(dst, view->buf, (size_t)n);
    if (n < len) memset(dst + n, 0, (size_t)(len - n));
    return 0;
}

static PyObject *Writer_on_decision(Writer *self, PyObject *d) {
    uint64_t *hdr = self->hdr;
    if (hdr == NULL) Py_RETURN_NONE;  /* released */
    uint64_t head = hdr[H_HEAD];
    if (head - self->consumed >= self->cap) {  /* looks full: see how far the reader got */
        self->consumed = __atomic_load_n(&hdr[H_CONSUMED], __ATOMIC_ACQUIRE);
        if (head - self->consumed >= self->cap) {
            hdr[H_DROPPED] += 1;
            hdr[H_PENDING] += 1;
            Py_RETURN_NONE;
        }
    }
    char *r = self->recs + (Py_ssize_t)(head & self->mask) * self->rec;
    int64_t *p = (int64_t *)r;
    PyObject *o;
    /* timings, flags, rung index */
    if ((o = field(self, d, F_TIMINGS)) == NULL) goto fail;
    if (PyTuple_Check(o)) {
        Py_ssize_t n = PyTuple_GET_SIZE(o);
        for (Py_ssize_t i = 0; i < 5; i++) p[2 + i] = i < n ? as_i64(PyTuple_GET_ITEM(o, i)) : 0;
    } else {
        for (int i = 0; i < 5; i++) p[2 + i] = 0;
    }
    Py_DECREF(o);
    if ((o = field(self, d, F_FLAGS)) == NULL) goto fail;
    p[7] = as_i64(o);
    Py_DECREF(o);
    if ((o = field(self, d, F_RUNG_INDEX)) == NULL) goto fail;
    *(int16_t *)(r + 64) = (int16_t)as_i64(o);
    Py_DECREF(o);
    /* version, priority (Python helpers intern new labels) */
    uint16_t vid, pid;
    if ((o = field(self, d, F_VERSION)) == NULL) goto fail;
    if (table_id(self->versions, self->intern_version, o, &vid) < 0) { Py_DECREF(o); goto fail; }
    Py_DECREF(o);
    if ((o = field(self, d, F_PRIORITY)) == NULL) goto fail;
    if (table_id(self->priorities, self->intern_priority, o, &pid) < 0) { Py_DECREF(o); goto fail; }
    Py_DECREF(o);
    *(uint16_t *)(r + 66) = vid;
    *(uint16_t *)(r + 68) = pid;
    /* key */
    char *kd = r + 88;
    memset(kd, 0, (size_t)(self->o_out - 88));
    uint8_t kind = 0;
    Py_ssize_t klen = 0;
    if ((o = field(self, d, F_KEY)) == NULL) goto fail;
    const char *s = NULL;
    int fast = 0;
    if (PyUnicode_CheckExact(o)) {
        s = PyUnicode_AsUTF8AndSize(o, &klen);
        if (s == NULL) PyErr_Clear();
        else if (klen <= self->key_bytes) { memcpy(kd, s, (size_t)klen); kind = 0; fast = 1; }
    } else if (PyLong_CheckExact(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred()) PyErr_Clear();
        else if (!overflow) { int64_t v64 = (int64_t)v; memcpy(kd, &v64, 8); kind = 1; klen = 8; fast = 1; }
    }
    if (!fast) {
        PyObject *pos = PyLong_FromUnsignedLongLong(head);
        if (pos == NULL) { Py_DECREF(o); goto fail; }
        PyObject *t = PyObject_CallFunctionObjArgs(self->key_slow, o, pos, NULL);
        Py_DECREF(pos);
        if (t == NULL) { Py_DECREF(o); goto fail; }
        char *b; Py_ssize_t blen;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3 ||
            PyBytes_AsStringAndSize(PyTuple_GET_ITEM(t, 1), &b, &blen) < 0) {
            Py_DECREF(t); Py_DECREF(o); PyErr_Clear(); goto fail;
        }
        kind = (uint8_t)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
        klen = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 2));
        if (PyErr_Occurred()) { Py_DECREF(t); Py_DECREF(o); PyErr_Clear(); goto fail; }
        memcpy(kd, b, (size_t)(blen < self->key_bytes ? blen : self->key_bytes));
        Py_DECREF(t);
    }
    Py_DECREF(o);
    *(uint16_t *)(r + 70) = (uint16_t)(klen > 65535 ? 65535 : klen);
    r[72] = (char)kind; r[73] = 0; r[74] = 0; r[75] = 0;
    /* outputs: a C-contiguous float64 buffer is copied as is, anything else goes through Python */
    if ((o = field(self, d, F_OUTPUTS)) == NULL) goto fail;
    {
        Py_buffer ob;
        Py_ssize_t olen = 8 * self->n_out;
        char *od = r + self->o_out;
#ifdef TG_NUMPY
        if (Py_TYPE(o) == self->ndarray_type) {
            PyArrayObject *a = (PyArrayObject *)o;
            if (PyArray_TYPE(a) == NPY_DOUBLE && PyArray_ISNBO(PyArray_DESCR(a)->byteorder) &&
                (PyArray_FLAGS(a) & NPY_ARRAY_C_CONTIGUOUS)) {
                Py_ssize_t n = 8;
                for (int i = 0; i < PyArray_NDIM(a); i++) n *= PyArray_DIMS(a)[i];
                if (n > olen) n = olen;
                memcpy(od, PyArray_DATA(a), (size_t)n);
                if (n < olen) memset(od + n, 0, (size_t)(olen - n));
                Py_DECREF(o);
                goto outputs_done;
            }
        }
#endif
        if (PyObject_GetBuffer(o, &ob, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0) {
            const char *f = ob.format ? ob.format : "B";
            if (*f == '<' || *f == '=' || *f == '@') f++;
            if (ob.itemsize == 8 && f[0] == 'd' && f[1] == 0) {
                Py_ssize_t n = ob.len < olen ? ob.len : olen;
                memcpy(od, ob.buf, (size_t)n);
                if (n < olen) memset(od + n, 0, (size_t)(olen - n));
                PyBuffer_Release(&ob);
                Py_DECREF(o);
                goto outputs_done;
            }
            PyBuffer_Release(&ob);
        } else {
            PyErr_Clear();
        }
        PyObject *b = PyObject_CallOneArg(self->outputs_slow, o);
        Py_DECREF(o);
        if (b == NULL || !PyBytes_Check(b) || PyBytes_GET_SIZE(b) != olen) {
            Py_XDECREF(b);
            goto fail;
        }
        memcpy(od, PyBytes_AS_STRING(b), (size_t)olen);
        Py_DECREF(b);
    }
outputs_done:
    /* the engine's feature row and the assembler's write times, looked up each call */
    if (copy_row(self->engine, s_wide_row, &self->wide_obj, &self->wide, r + self->o_feat,
                 self->feat_len) < 0)
        goto fail;
    memset(r + self->o_feat_end, 0, (size_t)(self->o_writ - self->o_feat_end));
    if (copy_row(self->asm_, s_written_row, &self->writ_obj, &self->writ, r + self->o_writ,
                 self->writ_len) < 0)
        goto fail;
    if ((o = PyObject_GetAttr(self->asm_, s_filled)) == NULL) goto fail;
    p[1] = as_i64(o);
    Py_DECREF(o);
    /* batch fields, the gap count, the position; then publish */
    uint64_t pend = hdr[H_PENDING];
    *(uint32_t *)(r + 76) = 0;
    *(uint32_t *)(r + 80) = 0;
    *(uint32_t *)(r + 84) = (uint32_t)(pend > 0xFFFFFFFFu ? 0xFFFFFFFFu : pend);
    p[0] = (int64_t)head;
    hdr[H_PENDING] = 0;
    __atomic_store_n(&hdr[H_HEAD], head + 1, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
fail:
    /* never raise on the reply path: count it, write nothing */
    PyErr_Clear();
    self->errors++;
    Py_RETURN_NONE;
}

/* Publish records written elsewhere (a batch, by ring.py): clear the gap count, store ``head``
 * with release order (after those records' bytes). */
static PyObject *Writer_publish(Writer *self, PyObject *arg) {
    unsigned long long h = PyLong_AsUnsignedLongLong(arg);
    if (h == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (self->hdr != NULL) {
        self->hdr[H_PENDING] = 0;
        __atomic_store_n(&self->hdr[H_HEAD], (uint64_t)h, __ATOMIC_RELEASE);
    }
    Py_RETURN_NONE;
}

static PyObject *Writer_release(Writer *self, PyObject *unused) {
    release_all(self);
    Py_RETURN_NONE;
}

static PyObject *Writer_get_errors(Writer *self, void *c) { return PyLong_FromSsize_t(self->errors); }

static PyMethodDef Writer_methods[] = {
    {"on_decision", (PyCFunction)Writer_on_decision, METH_O, "Write one decision into the ring."},
    {"publish", (PyCFunction)Writer_publish, METH_O, "Store head (release order) after a batch."},
    {"release", (PyCFunction)Writer_release, METH_NOARGS, "Drop every buffer held (before unmapping)."},
    {NULL}
};
static PyGetSetDef Writer_getset[] = {
    {"errors", (getter)Writer_get_errors, NULL, "Decisions not written because reading them failed.", NULL},
    {NULL}
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tailguard.observe._ringwriter.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Writer_traverse,
    .tp_clear = (inquiry)Writer_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ringwriter", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__ringwriter(void) {
    if (PyType_Ready(&WriterType) < 0) return NULL;
#define INTERN(v, s) if ((v = PyUnicode_InternFromString(s)) == NULL) return NULL
    INTERN(s_fields[F_TIMINGS], "timings_ns");
    INTERN(s_fields[F_FLAGS], "flags");
    INTERN(s_fields[F_RUNG_INDEX], "rung_index");
    INTERN(s_fields[F_OUTPUTS], "outputs");
    INTERN(s_fields[F_KEY], "key");
    INTERN(s_fields[F_VERSION], "model_version");
    INTERN(s_fields[F_PRIORITY], "priority");
    INTERN(s_filled, "filled_ns");
    INTERN(s_wide_row, "_wide_row");
    INTERN(s_written_row, "_written_row");
#undef INTERN
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType); Py_DECREF(m); return NULL;
    }
    return m;
}
