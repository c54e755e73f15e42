# Convenience targets; each is one script, which is where the documentation lives.
.PHONY: up test binary release release-cuda

up:
	./dev up

test:
	./dev test

binary:
	sh scripts/build-binary.sh cpu

release:
	sh scripts/release.sh cpu

release-cuda:
	sh scripts/release.sh cuda
