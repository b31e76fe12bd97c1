module weir.example/length-limit-go

go 1.24
