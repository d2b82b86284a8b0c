module meshauth.invalid/test/cluster/build/probe

go 1.24.0
