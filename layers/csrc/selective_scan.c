/* Mamba's S6 selective scan on the CPU, fp32, forward and backward: the computation of
 * layers/_selective_scan.py's _SelectiveScan, in its layout, as plain C (no torch headers, so
 * it builds in about a second; layers/_cscan.py compiles and loads it).
 *
 *   h_t = exp(delta_t A) * h_{t-1} + B_t (delta_t u_t),   y_t = C_t . h_t + D u_t
 *
 * Layout (all contiguous, time-major): u, delta, y [T, B, Di]; A_t [N, Di] (A transposed);
 * Bm, Cm [T, B, N]; D [Di]. Per batch row b the state h is [N, Di], so every inner loop runs
 * over the Di channels, the contiguous axis of u, delta, A_t and h: gcc vectorises it
 * (`#pragma omp simd` under -fopenmp-simd), exp included (exp2_ps below, a polynomial that
 * vectorises without -ffast-math and libmvec).
 *
 * Forward: the loop over t, keeping the state entering every K-th step in `starts`
 * [ceil(T / K), B, N, Di] when the backward will need it (NULL otherwise).
 * Backward, per b and per segment of K steps from the end: the segment's states and decays
 * again from its kept state (a (2K + 1) N Di buffer per thread), then the adjoint in reverse:
 *   g_t = C_t gy_t + p_{t+1},  p_t = exp(delta_t A) g_t,  R_t = p_t h_{t-1} (dL/d(delta_t A)),
 *   dL/d(delta u)_t = sum_n B_t g_t,  dL/dB_t = sum_d (delta u)_t g_t,  dL/dC_t = sum_d gy_t h_t,
 *   dL/ddelta_t = sum_n A R_t + u_t dL/d(delta u)_t,  dL/du_t = delta_t dL/d(delta u)_t + D gy_t,
 *   dL/dA = sum_(b, t) delta_t R_t,  dL/dD = sum_(b, t) gy_t u_t.
 * Threads (pthreads) split the batch rows; dA and dD are kept per b ([B, N, Di], [B, Di]) and
 * summed over b in a fixed order afterwards, so the results are bit-identical for any number of
 * threads. Every function returns 0, or -1 when memory could not be allocated.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef long long i64;

/* 2^v in fp32 to about 2 ulp: v = n + r, |r| <= 1/2, 2^r by a degree-5 polynomial (fitted to
 * relative error 1.9e-7 on [-1/2, 1/2]), 2^n by the exponent bits; 0 below -126 (where 2^n leaves
 * the normal range). n is rounded by adding and subtracting 1.5 * 2^23 (exact without
 * -ffast-math), so the loop vectorises with SSE2 alone; -fno-trapping-math lets gcc turn the
 * clamps into selects. The callers fold log2(e) into delta: exp(delta A) = 2^(delta log2(e) A). */
#define LOG2E 1.44269504088896341f
static inline float exp2_ps(float v) {
    float vc = v < -126.0f ? -126.0f : (v > 127.0f ? 127.0f : v);
    float n = (vc + 12582912.0f) - 12582912.0f;
    float r = vc - n;
    float p = 1.326472731307149e-3f;
    p = p * r + 9.671512991189957e-3f;
    p = p * r + 5.550733581185341e-2f;
    p = p * r + 2.4022242426872253e-1f;
    p = p * r + 6.931470036506653e-1f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return v < -126.0f ? 0.0f : p * s;
}

/* n floats, 64-byte aligned (aligned_alloc wants a multiple of the alignment). */
static float *alloc_floats(i64 n) {
    size_t bytes = (sizeof(float) * (size_t)n + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

typedef struct {
    const float *u, *delta, *A, *Bm, *Cm, *D, *gy;
    float *y, *starts, *gu, *gdelta, *gA_b, *gB, *gC, *gD_b;
    i64 T, B, Di, N, K;
    i64 b0, b1; /* this worker's batch rows */
    int failed;
} Job;

static void forward_rows(Job *j) {
    const i64 T = j->T, B = j->B, Di = j->Di, N = j->N, K = j->K;
    const float *restrict A = j->A, *restrict D = j->D;
    float *h = alloc_floats((N + 2) * Di + 16);  /* the state [N, Di]; a step's du, delta log2(e) */
    if (!h) { j->failed = 1; return; }
    float *restrict du = h + N * Di, *restrict dl2 = du + Di + 16;
    for (i64 b = j->b0; b < j->b1; b++) {
        memset(h, 0, sizeof(float) * N * Di);
        for (i64 t = 0; t < T; t++) {
            const i64 row = t * B + b;
            const float *restrict dl = j->delta + row * Di, *restrict uu = j->u + row * Di;
            const float *restrict Bt = j->Bm + row * N, *restrict Ct = j->Cm + row * N;
            float *restrict yy = j->y + row * Di;
            if (j->starts && t % K == 0)
                memcpy(j->starts + ((t / K) * B + b) * N * Di, h, sizeof(float) * N * Di);
#pragma omp simd
            for (i64 d = 0; d < Di; d++) {
                du[d] = dl[d] * uu[d];
                dl2[d] = dl[d] * LOG2E;
                yy[d] = D[d] * uu[d];
            }
            for (i64 n = 0; n < N; n++) {
                const float bn = Bt[n], cn = Ct[n];
                float *restrict hn = h + n * Di;
                const float *restrict An = A + n * Di;
#pragma omp simd
                for (i64 d = 0; d < Di; d++) {
                    float v = exp2_ps(dl2[d] * An[d]) * hn[d] + bn * du[d];
                    hn[d] = v;
                    yy[d] += cn * v;
                }
            }
        }
    }
    free(h);
}

static void backward_rows(Job *j) {
    const i64 T = j->T, B = j->B, Di = j->Di, N = j->N, K = j->K, S = N * Di;
    const float *restrict A = j->A, *restrict D = j->D;
    /* H: the segment's states, entering each step and after the last ((K + 1) S); E: its decays
     * (K S); p: the adjoint carried to the step before (S); du, dl2 (delta log2(e)), gdu, gdl:
     * a step's rows (Di each). */
    float *buf = alloc_floats((2 * K + 2) * S + 4 * (Di + 16));
    if (!buf) { j->failed = 1; return; }
    float *restrict H = buf, *restrict E = H + (K + 1) * S, *restrict p = E + K * S;
    float *restrict du = p + S, *restrict dl2 = du + Di + 16;
    float *restrict gdu = dl2 + Di + 16, *restrict gdl = gdu + Di + 16;
    for (i64 b = j->b0; b < j->b1; b++) {
        float *restrict gA = j->gA_b + b * S, *restrict gD = j->gD_b + b * Di;
        memset(gA, 0, sizeof(float) * S);
        memset(gD, 0, sizeof(float) * Di);
        memset(p, 0, sizeof(float) * S);
        for (i64 t0 = ((T - 1) / K) * K; t0 >= 0; t0 -= K) {
            const i64 t1 = t0 + K < T ? t0 + K : T;
            memcpy(H, j->starts + ((t0 / K) * B + b) * S, sizeof(float) * S);
            for (i64 t = t0; t < t1; t++) { /* the segment's states again */
                const i64 row = t * B + b, s = t - t0;
                const float *restrict dl = j->delta + row * Di, *restrict uu = j->u + row * Di;
                const float *restrict Bt = j->Bm + row * N;
#pragma omp simd
                for (i64 d = 0; d < Di; d++) {
                    du[d] = dl[d] * uu[d];
                    dl2[d] = dl[d] * LOG2E;
                }
                for (i64 n = 0; n < N; n++) {
                    const float bn = Bt[n];
                    const float *restrict An = A + n * Di, *restrict hp = H + s * S + n * Di;
                    float *restrict hn = H + (s + 1) * S + n * Di, *restrict en = E + s * S + n * Di;
#pragma omp simd
                    for (i64 d = 0; d < Di; d++) {
                        float a = exp2_ps(dl2[d] * An[d]);
                        en[d] = a;
                        hn[d] = a * hp[d] + bn * du[d];
                    }
                }
            }
            for (i64 t = t1 - 1; t >= t0; t--) { /* the adjoint */
                const i64 row = t * B + b, s = t - t0;
                const float *restrict dl = j->delta + row * Di, *restrict uu = j->u + row * Di;
                const float *restrict gyt = j->gy + row * Di;
                const float *restrict Bt = j->Bm + row * N, *restrict Ct = j->Cm + row * N;
                float *restrict gBt = j->gB + row * N, *restrict gCt = j->gC + row * N;
#pragma omp simd
                for (i64 d = 0; d < Di; d++) {
                    du[d] = dl[d] * uu[d];
                    gdu[d] = 0.0f;
                    gdl[d] = 0.0f;
                }
                for (i64 n = 0; n < N; n++) {
                    const float bn = Bt[n], cn = Ct[n];
                    const float *restrict An = A + n * Di, *restrict en = E + s * S + n * Di;
                    const float *restrict hp = H + s * S + n * Di, *restrict hn = H + (s + 1) * S + n * Di;
                    float *restrict pn = p + n * Di, *restrict gAn = gA + n * Di;
                    float gb = 0.0f, gc = 0.0f;
#pragma omp simd reduction(+:gb, gc)
                    for (i64 d = 0; d < Di; d++) {
                        float g = cn * gyt[d] + pn[d];
                        float pv = g * en[d];
                        float R = pv * hp[d];
                        gc += gyt[d] * hn[d];
                        gb += du[d] * g;
                        gdu[d] += bn * g;
                        gdl[d] += An[d] * R;
                        gAn[d] += dl[d] * R;
                        pn[d] = pv;
                    }
                    gBt[n] = gb;
                    gCt[n] = gc;
                }
                float *restrict gut = j->gu + row * Di, *restrict gdt = j->gdelta + row * Di;
#pragma omp simd
                for (i64 d = 0; d < Di; d++) {
                    gdt[d] = gdl[d] + gdu[d] * uu[d];
                    gut[d] = gdu[d] * dl[d] + gyt[d] * D[d];
                    gD[d] += gyt[d] * uu[d];
                }
            }
        }
    }
    free(buf);
}

static void *forward_worker(void *arg) { forward_rows((Job *)arg); return NULL; }
static void *backward_worker(void *arg) { backward_rows((Job *)arg); return NULL; }

/* Run `work` over the batch rows in up to `threads` contiguous ranges (one per thread; the
 * calling thread takes the first); a thread that cannot start has its rows run here. */
static int run_split(const Job *proto, int threads, void (*work)(Job *), void *(*entry)(void *)) {
    i64 B = proto->B, n = threads < 1 ? 1 : (threads > B ? B : threads);
    if (n < 1) n = 1;
    Job *jobs = calloc((size_t)n, sizeof(Job));
    pthread_t *ids = calloc((size_t)n, sizeof(pthread_t));
    char *started = calloc((size_t)n, 1);
    if (!jobs || !ids || !started) { free(jobs); free(ids); free(started); return -1; }
    for (i64 i = 0; i < n; i++) {
        jobs[i] = *proto;
        jobs[i].b0 = B * i / n;
        jobs[i].b1 = B * (i + 1) / n;
        jobs[i].failed = 0;
    }
    for (i64 i = 1; i < n; i++)
        started[i] = pthread_create(&ids[i], NULL, entry, &jobs[i]) == 0;
    work(&jobs[0]);
    int failed = jobs[0].failed;
    for (i64 i = 1; i < n; i++) {
        if (started[i]) pthread_join(ids[i], NULL);
        else work(&jobs[i]);
        failed |= jobs[i].failed;
    }
    free(jobs); free(ids); free(started);
    return failed ? -1 : 0;
}

int s6_forward(const float *u, const float *delta, const float *A_t, const float *Bm,
               const float *Cm, const float *D, float *y, float *starts,
               i64 T, i64 B, i64 Di, i64 N, i64 K, int threads) {
    Job job = {0};
    job.u = u; job.delta = delta; job.A = A_t; job.Bm = Bm; job.Cm = Cm; job.D = D;
    job.y = y; job.starts = starts;
    job.T = T; job.B = B; job.Di = Di; job.N = N; job.K = K;
    return run_split(&job, threads, forward_rows, forward_worker);
}

/* gA_b [B, N, Di] and gD_b [B, Di]: scratch for the per-row sums, reduced into gA, gD. */
int s6_backward(const float *u, const float *delta, const float *A_t, const float *Bm,
                const float *Cm, const float *D, const float *starts, const float *gy,
                float *gu, float *gdelta, float *gA, float *gB, float *gC, float *gD,
                float *gA_b, float *gD_b, i64 T, i64 B, i64 Di, i64 N, i64 K, int threads) {
    Job job = {0};
    job.u = u; job.delta = delta; job.A = A_t; job.Bm = Bm; job.Cm = Cm; job.D = D;
    job.starts = (float *)starts; job.gy = gy;
    job.gu = gu; job.gdelta = gdelta; job.gA_b = gA_b; job.gB = gB; job.gC = gC; job.gD_b = gD_b;
    job.T = T; job.B = B; job.Di = Di; job.N = N; job.K = K;
    if (run_split(&job, threads, backward_rows, backward_worker)) return -1;
    const i64 S = N * Di;
    memcpy(gA, gA_b, sizeof(float) * S);
    memcpy(gD, gD_b, sizeof(float) * Di);
    for (i64 b = 1; b < B; b++) { /* fixed order: the same sums for any number of threads */
        const float *restrict a = gA_b + b * S, *restrict e = gD_b + b * Di;
#pragma omp simd
        for (i64 i = 0; i < S; i++) gA[i] += a[i];
#pragma omp simd
        for (i64 d = 0; d < Di; d++) gD[d] += e[d];
    }
    return 0;
}
