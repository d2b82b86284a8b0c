module meshauth.invalid/test/cluster/build/pause

go 1.24.0
