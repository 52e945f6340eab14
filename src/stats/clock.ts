/** The one clock every timing in poolgate reads: monotonic where the runtime has it. */
export const now: () => number =
  typeof performance !== 'undefined' && typeof performance.now === 'function' ? () => performance.now() : () => Date.now();
