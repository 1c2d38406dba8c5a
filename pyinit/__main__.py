from pyinit.init import main

main()
