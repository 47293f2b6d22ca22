#include <stdlib.h>
#include <stdio.h>
#include <stdarg.h>
unsigned long long __isoc23_strtoull(const char*s,char**e,int b){return strtoull(s,e,b);}
int __isoc23_sscanf(const char*s,const char*f,...){va_list a;va_start(a,f);int r=vsscanf(s,f,a);va_end(a);return r;}
