from stubdom.cli.main import main

main()
