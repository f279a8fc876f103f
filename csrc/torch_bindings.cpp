// Op schemas of the vllm_ascend_rerank library and the Python module `_C`.
//
// Importing vllm_ascend_rerank._C registers the ops (torch.ops.vllm_ascend_rerank.*);
// the module itself only exposes the CPU kernel's instruction-set switch. It uses the
// plain Python C API (no pybind11), so the library needs nothing beyond libtorch.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(vllm_ascend_rerank, m) {
  // Store key/value [tokens, kv_heads, head_size] at slot_mapping's slots of the
  // [num_blocks, kv_heads, block_size, 2 * head_size] cache; slot -1 = padding, skipped.
  m.def("write_kv(Tensor key, Tensor value, Tensor(a!) kv_cache, Tensor slot_mapping) -> ()");
  // Attention of a variable-length batch against the paged cache (K/V already written):
  // request r owns query rows query_start_loc[r]:query_start_loc[r+1] and has seq_lens[r]
  // tokens in all; causal masks are offset by seq_len - query_len; GQA by head count.
  m.def(
      "paged_prefill_attention(Tensor query, Tensor kv_cache, Tensor block_table, "
      "Tensor query_start_loc, Tensor seq_lens, float scale, bool causal, "
      "Tensor(a!) output) -> ()");
  // RMSNorm over the last dim (unit stride), with the semantics of vLLM's IR op rms_norm:
  // fp32 sums, the normalized row rounded to x's dtype, then times weight (x's dtype).
  m.def("rms_norm(Tensor x, Tensor weight, float epsilon) -> Tensor");
  // residual <- x + residual (rounded to x's dtype); x <- rms_norm of the fp32 sum.
  m.def(
      "fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float epsilon) "
      "-> ()");
  // silu(x[..., :d]) * x[..., d:] with d = x.size(-1) / 2, as vLLM's SiluAndMul.
  m.def("silu_and_mul(Tensor x) -> Tensor");
}

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(vllm_ascend_rerank::cpu_attention_isa().c_str());
}

PyObject* cpu_isas(PyObject*, PyObject*) {
  const auto names = vllm_ascend_rerank::cpu_attention_isas();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(names.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < names.size(); ++i)
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), PyUnicode_FromString(names[i].c_str()));
  return list;
}

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  if (!vllm_ascend_rerank::set_cpu_attention_isa(name)) {
    PyErr_Format(PyExc_ValueError, "CPU attention ISA %R is not available here", arg);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set the CPU attention kernel uses."},
    {"cpu_isas", cpu_isas, METH_NOARGS, "Instruction sets this build and CPU support."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Force the CPU attention kernel's instruction set."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_C", "vllm-ascend-rerank C++ ops", -1, methods, nullptr, nullptr, nullptr,
    nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }
