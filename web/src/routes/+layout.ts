// A single-page app: rendered in the browser only, served as one index.html by the control plane.
export const ssr = false;
export const prerender = false;
export const trailingSlash = 'never';
