# Writes OUT: a C++ file holding every recipe of RECIPES (.yaml paths separated by |) as a string,
# so the `ramstream` binary carries its bundled recipes wherever it is installed.
set(_body "")
string(REPLACE "|" ";" _files "${RECIPES}")
foreach(_file ${_files})
  get_filename_component(_name ${_file} NAME_WLE)
  file(READ ${_file} _text)
  string(FIND "${_text}" ")RSYAML" _clash)
  if(NOT _clash EQUAL -1)
    message(FATAL_ERROR "${_file} contains the delimiter )RSYAML")
  endif()
  string(APPEND _body "      {\"${_name}\", R\"RSYAML(${_text})RSYAML\"},\n")
endforeach()
file(WRITE ${OUT}.new "// Generated from recipes/*.yaml by trainer/embed_recipes.cmake; do not edit.
#include \"trainer/recipe.h\"

namespace ramstream::trainer {

const std::vector<BundledRecipe>& bundled_recipes() {
  static const std::vector<BundledRecipe> recipes = {
${_body}  };
  return recipes;
}

}  // namespace ramstream::trainer
")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUT}.new ${OUT})
