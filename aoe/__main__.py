from aoe.cli.main import main

main()
