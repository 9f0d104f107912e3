/* tailguard's batch entry point for tl2cgen-generated tree code.
 *
 * tl2cgen generates `predict(union Entry*, int pred_margin, double* result)` for one row;
 * calling it per row from Python costs a foreign call per row.  This shim converts a whole
 * float32 matrix (NaN = missing, as LightGBM treats it) into tl2cgen's Entry rows on the
 * stack and predicts every row in one call.  Pure stack state: reentrant, thread-safe.
 *
 * tl2cgen tests `missing == -1` on the low 32 bits of the union.  A double converted from a
 * float32 has its low 29 mantissa bits zero, so a real value can never read as missing.
 */
#include "header.h"
#include <stdint.h>

int32_t tg_num_feature(void) { return get_num_feature(); }

int32_t tg_num_output(void) { return N_TARGET * MAX_N_CLASS; }

void tg_predict(const float* X, int64_t n, int64_t stride, double* out, int32_t pred_margin) {
  const int32_t nf = get_num_feature();
  const int32_t no = N_TARGET * MAX_N_CLASS;
  union Entry row[nf];
  for (int64_t i = 0; i < n; ++i) {
    const float* x = X + i * stride;
    for (int32_t j = 0; j < nf; ++j) {
      if (isnan(x[j])) {
        row[j].missing = -1;
      } else {
        row[j].fvalue = x[j];
      }
    }
    double* o = out + i * no;
    for (int32_t k = 0; k < no; ++k) o[k] = 0.0;
    predict(row, pred_margin, o);
  }
}
