/*
 * jsonstats: an example Wasm tool written in C (WASI, wasm32-wasip1): it reads its input, any
 * JSON document, and writes how many objects, arrays, strings, numbers and literals it holds and
 * how deeply it nests. It shows what a non-Go Wasm tool needs: a main that reads
 * /axocoatl/input.json and writes /axocoatl/output.json with plain stdio; nothing else of the
 * host exists for it.
 *
 * Build (Debian: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32):
 *   clang --target=wasm32-wasi -O2 -s -o jsonstats.wasm jsonstats.c
 * or examples/wasm-c/build.sh.
 *
 * The input was checked as JSON before the call (and against the tool's input schema), so a
 * scanner that counts tokens is enough: no values are parsed.
 */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
	FILE *in = fopen("/axocoatl/input.json", "r");
	if (in == NULL) {
		perror("jsonstats: open /axocoatl/input.json");
		return 1;
	}
	long objects = 0, arrays = 0, strings = 0, numbers = 0, literals = 0, bytes = 0;
	int depth = 0, max_depth = 0;
	int c;
	while ((c = fgetc(in)) != EOF) {
		bytes++;
		switch (c) {
		case '{':
		case '[':
			if (c == '{')
				objects++;
			else
				arrays++;
			if (++depth > max_depth)
				max_depth = depth;
			break;
		case '}':
		case ']':
			depth--;
			break;
		case '"':
			strings++;
			/* Skip to the closing quote; a backslash escapes the next byte. */
			while ((c = fgetc(in)) != EOF && c != '"') {
				bytes++;
				if (c == '\\' && fgetc(in) != EOF)
					bytes++;
			}
			bytes++;
			break;
		case 't': /* true */
		case 'f': /* false */
		case 'n': /* null */
			literals++;
			while ((c = fgetc(in)) != EOF && c >= 'a' && c <= 'z')
				bytes++;
			if (c != EOF)
				ungetc(c, in);
			break;
		default:
			if (c == '-' || (c >= '0' && c <= '9')) {
				numbers++;
				while ((c = fgetc(in)) != EOF && (c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' || (c >= '0' && c <= '9')))
					bytes++;
				if (c != EOF)
					ungetc(c, in);
			}
		}
	}
	fclose(in);
	/* Object keys are strings too: the count includes them. */
	fprintf(stderr, "jsonstats: scanned %ld bytes\n", bytes);
	FILE *out = fopen("/axocoatl/output.json", "w");
	if (out == NULL) {
		perror("jsonstats: create /axocoatl/output.json");
		return 1;
	}
	fprintf(out, "{\"bytes\":%ld,\"objects\":%ld,\"arrays\":%ld,\"strings\":%ld,\"numbers\":%ld,\"literals\":%ld,\"max_depth\":%d,\"language\":\"C\"}\n",
	        bytes, objects, arrays, strings, numbers, literals, max_depth);
	if (fclose(out) != 0) {
		perror("jsonstats: write /axocoatl/output.json");
		return 1;
	}
	printf("jsonstats: done\n");
	return 0;
}
