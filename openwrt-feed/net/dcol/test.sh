#!/bin/sh
# Run by the OpenWrt packages CI after installing the package.

case "$1" in
dcol)
	dcol --version | grep -F "$2"
	;;
esac
