// keel: command-line entry point. Subcommands are added by the cli/ files.
#include <cstdio>

int main(int argc, char** argv) {
  std::fprintf(stderr, "keel: not built yet\n");
  return 1;
}
