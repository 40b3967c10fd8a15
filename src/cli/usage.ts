/** A command line that does not make sense: printed with a pointer to --help, exit status 2. */
export class UsageError extends Error {}
