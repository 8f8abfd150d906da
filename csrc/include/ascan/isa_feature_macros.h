// Feature macros for a translation unit compiled under `#pragma GCC target("avx2,fma,f16c,...")`.
//
// In C++ the pragma enables the instructions but does not define the macros announcing
// them, and sleef.h (pulled in by ATen's vector headers) declares its AVX functions only
// under those macros. Include this right after the pragma, before any other header; it
// includes nothing itself. Only for code that runs on CPUs that have these features.
#pragma once

#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
