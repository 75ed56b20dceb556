// Drops clean page-cache pages of a file range once the shared cache holds those bytes, so memory
// keeps each chunk once. Advisory: it never fails its caller (a range the addon refuses, a file
// closed meanwhile, an error of the call itself), and runs on the thread pool (native.ts).
import { native } from '../native.js';

export function dropCleanPages(fd: number, offset: number, length: number): void {
  try {
    native().fadviseDontNeed(fd, offset, length).catch(() => {});
  } catch {
    /* refused arguments */
  }
}
